"""The offline generation loop behind ``negclip generate``: propose -> verify -> rewrite, resumable by chunks.

Output goes to ``OUT.partial`` (JSONL) in whole chunks, each appended, flushed and fsynced before the sidecar
``OUT.progress.json`` (written atomically) records how many chunks and bytes are done. A restarted run truncates
the partial file to the recorded size (dropping a half-written chunk) and continues with the next chunk; every
chunk has its own seeded RNG, so a resumed run writes exactly what an uninterrupted one does. At the end the
partial file is renamed to OUT (or converted to NegationCLIP's JSON when OUT ends in ``.json``).

A negator with a ``concurrency`` (the ``llm`` negator against a server) is run one caption per task, that many at
once, across chunk boundaries (no chunk waits for its slowest caption before the next starts); each caption has its
own seeded RNG and chunks are still written in order. A task whose server stays unavailable
(:class:`~negation_plugins.data.llm.LlmUnavailable`) falls back to the template negator for that step; the step
is counted (``fallbacks``) and listed in ``OUT.fallbacks.jsonl``, written alongside the records.

``shard=(I, N)`` processes the I-th of N contiguous ranges of whole chunks, so its records are exactly the ones an
unsharded run writes for those captions; it also writes ``OUT.shard.json``, and :func:`merge_shards` concatenates
the N outputs into the unsharded file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from ..atomic import atomic_write, atomic_write_text, disk_writes
from .io import (
    KINDS,
    CaptionItem,
    CaptionSet,
    DataError,
    NegationRecord,
    read_negation_records,
    write_negationclip_json,
)
from .llm import LlmUnavailable
from .negators import Negator, TemplateNegator, presence_candidates
from .verifiers import Verifier


def _sidecar(out: Path, suffix: str) -> Path:
    return out.with_name(out.name + suffix)


# Options that say where and how fast a run goes, not what it writes: a resume or a shard may change them.
PLACEMENT_OPTIONS = frozenset({"device", "workers", "cache", "concurrency", "retries", "retry_seconds", "timeout",
                               "api_key"})  # fmt: skip


def _fingerprint(caption_set: CaptionSet, settings: dict) -> str:
    options = {part: {k: v for k, v in values.items() if k not in PLACEMENT_OPTIONS}
               for part, values in settings["options"].items()}  # fmt: skip
    digest = hashlib.sha256(json.dumps({**settings, "options": options}, sort_keys=True).encode())
    for item in caption_set.items:
        digest.update(f"{item.image}\t{item.caption}\t{item.objects}\n".encode())
    return digest.hexdigest()


def shard_range(n_chunks: int, shard: tuple[int, int]) -> range:
    """The chunks of shard ``(I, N)``: the I-th of N contiguous, near-equal ranges."""
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
    return range(index * n_chunks // count, (index + 1) * n_chunks // count)


def generate_chunk(
    items: Sequence[CaptionItem],
    vocabulary: Sequence[str],
    negator: Negator,
    verifier: Verifier | None,
    kinds: Sequence[str],
    rng: random.Random,
    stats: Counter,
) -> list[NegationRecord]:
    """Records for one chunk of captions (absence records first, then presence, each in item order)."""
    records = []
    verifier_name = verifier.name if verifier is not None else None
    if "absence" in kinds:
        candidates = negator.propose(items, vocabulary, rng)
        chosen: list[str | None] = [None] * len(items)
        if verifier is None:
            chosen = [c[0] if c else None for c in candidates]
        else:
            for round_ in range(max((len(c) for c in candidates), default=0)):
                todo = [i for i, c in enumerate(candidates) if chosen[i] is None and round_ < len(c)]
                if not todo:
                    break
                verdicts = verifier.absent([items[i] for i in todo], [candidates[i][round_] for i in todo])
                for i, ok in zip(todo, verdicts):
                    if ok:
                        chosen[i] = candidates[i][round_]
        keep = [i for i, obj in enumerate(chosen) if obj is not None]
        stats["absence_no_object"] += len(items) - len(keep)
        texts = negator.rewrite([items[i] for i in keep], [chosen[i] for i in keep], "absence", rng)
        for i, text in zip(keep, texts):
            if text is None:
                stats["absence_not_negatable"] += 1
                continue
            records.append(_record(items[i], text, chosen[i], "absence", negator.name, verifier_name))
    if "presence" in kinds:
        picked = []
        for i, item in enumerate(items):
            present = presence_candidates(item, vocabulary)
            if present:
                picked.append((i, rng.choice(present)))
        stats["presence_no_object"] += len(items) - len(picked)
        texts = negator.rewrite([items[i] for i, _ in picked], [o for _, o in picked], "presence", rng)
        for (i, obj), text in zip(picked, texts):
            if text is None:
                stats["presence_not_negatable"] += 1
                continue
            source = "annotations" if items[i].objects is not None else "caption"
            records.append(_record(items[i], text, obj, "presence", negator.name, source))
    return records


def _record(item: CaptionItem, text: str, obj: str, kind: str, negator: str, verifier: str | None) -> NegationRecord:
    return NegationRecord(
        image=item.image,
        image_id=item.image_id,
        caption=item.caption,
        negated_caption=text,
        objects=[obj],
        kind=kind,
        negator=negator,
        verifier=verifier,
    )


class _WithFallback:
    """``negator`` for one task: a step whose server stays unavailable is done by ``template`` and noted."""

    def __init__(self, negator: Negator, template: Negator):
        self.name, self.negator, self.template, self.failures = negator.name, negator, template, []

    def propose(self, items, vocabulary, rng):
        return self._call("object", "propose", items, vocabulary, rng)

    def rewrite(self, items, objects, kind, rng):
        return self._call(kind, "rewrite", items, objects, kind, rng)

    def _call(self, step, method, *args):
        try:
            return getattr(self.negator, method)(*args)
        except LlmUnavailable as e:
            self.failures.append({"step": step, "error": str(e)})
            return getattr(self.template, method)(*args)


class _SharedVerifier:
    """The caption tasks' way to the verifier: whoever finds it idle asks for everything queued so far in one
    batch (so a GPU verifier sees batches while the tasks wait on the server), the others wait for their verdicts."""

    def __init__(self, verifier: Verifier):
        self.name, self.verifier = verifier.name, verifier
        self.turn = threading.Condition()
        self.queue: list[list] = []  # [item, object, verdict or None, error or None]
        self.busy = False

    def absent(self, items, objects):
        mine = [[item, obj, None, None] for item, obj in zip(items, objects)]
        with self.turn:
            self.queue += mine
            while any(entry[2] is None and entry[3] is None for entry in mine):
                if self.busy:
                    self.turn.wait()
                    continue
                batch, self.queue, self.busy = self.queue, [], True
                self.turn.release()
                try:
                    verdicts = self.verifier.absent([e[0] for e in batch], [e[1] for e in batch])
                except BaseException as error:
                    verdicts = [None] * len(batch)
                    for entry in batch:
                        entry[3] = error
                finally:
                    self.turn.acquire()
                    self.busy = False
                    self.turn.notify_all()
                for entry, verdict in zip(batch, verdicts):
                    entry[2] = verdict
        for entry in mine:
            if entry[3] is not None:
                raise entry[3]
        return [entry[2] for entry in mine]


Chunk = tuple[int, list[NegationRecord], list[dict], Counter]


def _batched_chunks(items, chunks: range, chunk_size, vocabulary, negator, verifier, kinds, seed) -> Iterator[Chunk]:
    for k in chunks:
        stats: Counter = Counter()
        rng = random.Random(f"{seed}:{k}")
        chunk = items[k * chunk_size : (k + 1) * chunk_size]
        yield k, generate_chunk(chunk, vocabulary, negator, verifier, kinds, rng, stats), [], stats


def _one_caption(index, item, vocabulary, negator, template, verifier, kinds, seed):
    stats: Counter = Counter()
    task = _WithFallback(negator, template)
    records = generate_chunk([item], vocabulary, task, verifier, kinds, random.Random(f"{seed}:item:{index}"), stats)
    where = {"index": index, "image": item.image, "image_id": item.image_id, "caption": item.caption}
    return records, [{**where, **failure} for failure in task.failures], stats


def _concurrent_chunks(items, chunks: range, chunk_size, vocabulary, negator, verifier, kinds, seed) -> Iterator[Chunk]:
    """Chunks in order, computed by ``negator.concurrency`` caption tasks that run ahead across chunk boundaries."""
    template = TemplateNegator(context_length=negator.context_length)
    verifier = _SharedVerifier(verifier) if verifier is not None else None
    todo = iter(range(chunks.start * chunk_size, min(len(items), chunks.stop * chunk_size)))
    window = max(chunk_size, 4 * negator.concurrency)  # submitted but not yet written
    pending: deque = deque()
    pool = ThreadPoolExecutor(max_workers=negator.concurrency, thread_name_prefix="negate")
    try:
        for k in chunks:
            records, failures, stats = [], [], Counter()
            for _ in range(k * chunk_size, min(len(items), (k + 1) * chunk_size)):
                while len(pending) < window and (i := next(todo, None)) is not None:
                    pending.append(pool.submit(_one_caption, i, items[i], vocabulary, negator, template, verifier,
                                               kinds, seed))  # fmt: skip
                item_records, item_failures, item_stats = pending.popleft().result()
                records += item_records
                failures += item_failures
                stats.update(item_stats)
            yield k, records, failures, stats
    except BaseException:  # an error, Ctrl-C or an early close: stop the tasks instead of waiting for them
        for future in pending:
            future.cancel()
        if hasattr(negator, "cancel"):
            negator.cancel()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def generate(
    caption_set: CaptionSet,
    out: str | os.PathLike,
    negator: Negator,
    verifier: Verifier | None = None,
    kinds: Sequence[str] = KINDS,
    vocabulary: Sequence[str] = (),
    seed: int = 0,
    chunk_size: int = 256,
    overwrite: bool = False,
    progress: bool = True,
    options: dict | None = None,
    shard: tuple[int, int] = (0, 1),
) -> dict:
    """Write negation records for every caption (of one shard) to ``out``; resumes a killed run. Returns the summary.

    ``options`` (the negator's/verifier's settings, but not :data:`PLACEMENT_OPTIONS`) join the fingerprint that
    a resumed run and the other shards must match.
    """
    out = Path(out)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds must be among {', '.join(KINDS)}, got {list(kinds)}")
    if not vocabulary:
        raise ValueError("an object vocabulary is needed to pick objects to negate")
    if not caption_set.items:
        skipped = (
            f" ({caption_set.skipped_bad_images} skipped for bad images)" if caption_set.skipped_bad_images else ""
        )
        raise DataError(f"{caption_set.source or 'captions'}: no captions to negate{skipped}; nothing written")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    items = caption_set.items
    n_chunks = (len(items) + chunk_size - 1) // chunk_size
    chunks = shard_range(n_chunks, shard)
    sharded = shard[1] > 1
    if sharded and out.suffix.lower() == ".json":
        raise ValueError("a shard writes JSONL records: give --out NAME.jsonl (merge the shards into .json)")
    if verifier is not None:
        verifier.set_vocabulary(vocabulary)
    negator.prepare(items, vocabulary)
    partial, progress_file = _sidecar(out, ".partial"), _sidecar(out, ".progress.json")
    fallback_file, shard_file = _sidecar(out, ".fallbacks.jsonl"), _sidecar(out, ".shard.json")
    fallback_partial = _sidecar(fallback_file, ".partial")
    settings = {
        "negator": negator.name,
        "verifier": verifier.name if verifier else None,
        "kinds": list(kinds),
        "seed": seed,
        "chunk_size": chunk_size,
        "vocabulary": list(vocabulary),
        "options": options or {},
    }
    fingerprint = _fingerprint(caption_set, settings)
    state = {"fingerprint": fingerprint, "shard": list(shard), "chunks_done": chunks.start, "bytes": 0,
             "fallback_bytes": 0, "stats": {}, "seconds": 0.0}  # fmt: skip
    if overwrite:
        for path in (partial, progress_file, fallback_partial, fallback_file, shard_file):
            path.unlink(missing_ok=True)
    elif out.exists():
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    if progress_file.exists() and partial.exists():
        try:
            saved = json.loads(progress_file.read_text())
        except json.JSONDecodeError:
            raise DataError(
                f"{progress_file}: corrupt progress file; delete it (and {partial}) to start over"
            ) from None
        if saved.get("fingerprint") != fingerprint or saved.get("shard", [0, 1]) != list(shard):
            raise DataError(
                f"{progress_file}: an unfinished run with different inputs, settings or shard; "
                "pass --overwrite to start over"
            )
        state = {**state, **saved}
        for path, size in ((partial, state["bytes"]), (fallback_partial, state["fallback_bytes"])):
            with open(path, "a+b") as f:
                f.truncate(size)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        for path in (partial, fallback_partial):
            path.unlink(missing_ok=True)
            path.touch()
    stats = Counter(state["stats"])
    resumed_from = state["chunks_done"]
    todo = range(resumed_from, chunks.stop)
    first, stop = chunks.start * chunk_size, min(len(items), chunks.stop * chunk_size)
    run = _concurrent_chunks if getattr(negator, "concurrency", None) else _batched_chunks
    started = time.perf_counter()
    bar = tqdm(total=stop - first, initial=min(stop, resumed_from * chunk_size) - first, unit="caption",
               desc="generate", disable=not progress)  # fmt: skip
    try:
        results = run(items, todo, chunk_size, vocabulary, negator, verifier, kinds, seed)
        with (
            disk_writes(partial),
            open(partial, "ab") as f,
            open(fallback_partial, "ab") as g,
            contextlib.closing(results),
        ):
            for k, records, failures, chunk_stats in results:
                stats.update(chunk_stats)
                stats.update(record.kind for record in records)
                stats["fallbacks"] += len(failures)
                for handle, lines in ((g, [json.dumps(x, ensure_ascii=False) for x in failures]),
                                      (f, [r.to_json() for r in records])):  # fmt: skip
                    handle.write("".join(line + "\n" for line in lines).encode())
                    handle.flush()
                    os.fsync(handle.fileno())
                state.update(chunks_done=k + 1, bytes=f.tell(), fallback_bytes=g.tell(),
                             stats=_merged_stats(stats, negator, verifier))  # fmt: skip
                state["seconds"] = state.get("seconds", 0.0) + (time.perf_counter() - started)
                started = time.perf_counter()
                atomic_write_text(progress_file, json.dumps(state))
                bar.update(min(stop, (k + 1) * chunk_size) - k * chunk_size)
                bar.set_postfix(records=stats["absence"] + stats["presence"])
    except BaseException:
        if state["chunks_done"] == chunks.start:  # nothing worth resuming: leave no partial output behind
            for path in (partial, fallback_partial, progress_file):
                path.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    final_stats = _merged_stats(stats, negator, verifier)
    if not sharded and not stats["absence"] + stats["presence"]:  # nothing to negate: say why, write no empty file
        for path in (partial, fallback_partial, progress_file):
            path.unlink(missing_ok=True)
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(final_stats.items()) if v) or "no reason recorded"
        raise DataError(
            f"{caption_set.source or 'captions'}: none of the {len(items)} captions could be negated "
            f"({reasons}); check --vocabulary/--kinds; nothing written to {out}"
        )
    final_stats["fallbacks"] = stats["fallbacks"]
    seconds = max(state.get("seconds", 0.0), 1e-9)
    summary = {
        "out": str(out),
        "captions": stop - first,
        "skipped_bad_images": caption_set.skipped_bad_images,
        "resumed_from_chunk": resumed_from - chunks.start,  # chunks of this shard done by an earlier run
        "seconds": round(seconds, 3),
        "captions_per_second": round((stop - first) / seconds, 1),
        **final_stats,
    }
    if stats["fallbacks"]:
        os.replace(fallback_partial, fallback_file)
        summary["fallbacks_file"] = str(fallback_file)
    else:
        fallback_partial.unlink()
    if out.suffix.lower() == ".json":
        records = read_negation_records(partial)
        written = write_negationclip_json(records, out)
        summary["dropped_presence_for_negationclip_json"] = len(records) - written
        partial.unlink()
    else:
        if sharded:
            summary["shard"] = f"{shard[0]}/{shard[1]}"
            description = {"shard": shard[0], "of": shard[1], "fingerprint": fingerprint, "captions": [first, stop],
                           "bytes": partial.stat().st_size, "summary": summary}  # fmt: skip
            atomic_write_text(shard_file, json.dumps(description, indent=1) + "\n")
        os.replace(partial, out)
    progress_file.unlink(missing_ok=True)
    return summary


def merge_shards(shards: Sequence[str | os.PathLike], out: str | os.PathLike, overwrite: bool = False) -> dict:
    """Join the outputs of ``generate(..., shard=(I, N))`` for every I into the file an unsharded run writes.

    Each shard's ``.shard.json`` must come from the same inputs and settings; missing, repeated or truncated
    shards are an error naming the file. Fallback lists are joined into ``OUT.fallbacks.jsonl``.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    if not shards:
        raise DataError("no shard outputs to merge")
    described = []
    for path in map(Path, shards):
        description = _sidecar(path, ".shard.json")
        if not path.is_file() or not description.is_file():
            missing = path if not path.is_file() else description
            raise DataError(f"{path}: not a finished shard output ({missing} is missing)")
        try:
            meta = json.loads(description.read_text())
            index, count, fingerprint, size = meta["shard"], meta["of"], meta["fingerprint"], meta["bytes"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{description}: not a shard description written by negclip generate --shard") from None
        if path.stat().st_size != size:
            raise DataError(f"{path}: {path.stat().st_size} bytes, but its shard description says {size}")
        described.append((index, count, fingerprint, path, meta["summary"]))
    _, count, fingerprint, first_path, _ = described[0]
    for _, n, fp, path, _ in described:
        if n != count or fp != fingerprint:
            raise DataError(f"{path}: shard of a different run than {first_path} (inputs, settings or N differ)")
    indices = sorted(d[0] for d in described)
    if indices != list(range(count)):
        missing = sorted(set(range(count)) - set(indices))
        repeated = sorted({i for i in indices if indices.count(i) > 1})
        problems = []
        if missing:
            problems.append(f"missing shard(s) {missing}")
        if repeated:
            problems.append(f"shard(s) {repeated} given more than once")
        raise DataError(f"cannot merge {len(described)} file(s) into {count} shards: {'; '.join(problems)}")
    described.sort(key=lambda d: d[0])
    paths = [d[3] for d in described]
    if out.suffix.lower() == ".json":
        write_negationclip_json([r for path in paths for r in read_negation_records(path)], out)
    else:
        atomic_write(out, lambda tmp: _concatenate(paths, tmp))
    fallbacks = [f for f in (_sidecar(path, ".fallbacks.jsonl") for path in paths) if f.is_file()]
    fallback_file = _sidecar(out, ".fallbacks.jsonl")
    if fallbacks:
        atomic_write(fallback_file, lambda tmp: _concatenate(fallbacks, tmp))
    else:
        fallback_file.unlink(missing_ok=True)
    summary: Counter = Counter()
    for *_, part in described:
        summary.update({k: v for k, v in part.items() if isinstance(v, int | float) and k != "resumed_from_chunk"})
    summary.pop("captions_per_second", None)
    summary["seconds"] = round(summary["seconds"], 3)
    summary["skipped_bad_images"] = described[0][4].get("skipped_bad_images", 0)  # every shard reads all captions
    return {"out": str(out), "shards": count, **dict(summary)} | (
        {"fallbacks_file": str(fallback_file)} if fallbacks else {}
    )


def _concatenate(paths: Sequence[Path], target: Path) -> None:
    with open(target, "wb") as sink:
        for path in paths:
            with open(path, "rb") as source:
                shutil.copyfileobj(source, sink)
        sink.flush()
        os.fsync(sink.fileno())


def _merged_stats(stats: Counter, negator: Negator, verifier: Verifier | None) -> dict:
    """Our counts plus the negator's/verifier's (added to what a resumed run had saved under the same keys)."""
    merged = dict(stats)
    for prefix, part in (("negator", negator), ("verifier", verifier)):
        for key, value in part.stats.items() if part is not None else ():
            merged[f"{prefix}_{key}"] = merged.get(f"{prefix}_{key}", 0) + value
    return merged


def generate_shards(
    pattern: str,
    out_dir: str | os.PathLike,
    negator: Negator,
    verifier: Verifier | None = None,
    kinds: Sequence[str] = ("absence",),
    vocabulary: Sequence[str] = (),
    seed: int = 0,
    chunk_size: int = 256,
    overwrite: bool = False,
    progress: bool = True,
    options: dict | None = None,
    shard: tuple[int, int] = (0, 1),
) -> dict:
    """Negations for img2dataset webdataset shards, one input shard at a time (this process: every ``shard[1]``-th
    shard from ``shard[0]``). For ``IN.tar`` it writes ``OUT_DIR/IN.negations.jsonl`` (our records; resumable by
    chunks like :func:`generate`) and then ``OUT_DIR/IN.tar``: the same samples with the records in each sample's
    ``json`` under ``negations``, which the trainer streams, plus ``IN_stats.json``. A shard whose output tar exists
    is done and skipped, so a killed run resumes at its unfinished shard. Returns a summary over this run's shards."""
    from .formats import Skips, shard_caption, shard_samples, source_units

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    units = [unit for unit, _ in source_units(pattern, "webdataset")]
    mine = units[shard[0] :: shard[1]]
    totals: Counter = Counter()
    done_before = 0
    started = time.perf_counter()
    for unit in tqdm(mine, desc="shards", unit="shard", disable=not progress or len(mine) < 2):
        unit = Path(unit)
        target = out_dir / unit.name
        if target.exists() and not overwrite:
            done_before += 1
            continue
        records_path = out_dir / (unit.name + ".negations.jsonl")
        if overwrite or not records_path.exists():
            skips = Skips(skip_bad=True)
            items = []
            for key, fields in shard_samples(unit, skips):
                meta = _sample_json(fields)
                caption = shard_caption(fields, meta)
                if caption:
                    items.append(CaptionItem(image=f"{unit.name}#{key}", caption=caption))
            caption_set = CaptionSet(items, [], 0, str(unit))
            generate(caption_set, records_path, negator, verifier, kinds, vocabulary, seed, chunk_size,
                     overwrite=overwrite, progress=progress and len(mine) == 1, options=options)  # fmt: skip
        by_image: dict[str, list[dict]] = {}
        for record in read_negation_records(records_path):
            fields = {k: v for k, v in json.loads(record.to_json()).items() if k not in ("image", "caption")}
            by_image.setdefault(record.image, []).append(fields)
        n_samples = _write_negated_shard(unit, target, by_image)
        totals["shards"] += 1
        totals["samples"] += n_samples
        totals["records"] += sum(len(v) for v in by_image.values())
    return {"out_dir": str(out_dir), "shards_total": len(units), "shards_mine": len(mine),
            "shards_done_before": done_before, **totals, "seconds": round(time.perf_counter() - started, 3)}  # fmt: skip


def _sample_json(fields: dict[str, bytes]) -> dict:
    try:
        meta = json.loads(fields["json"]) if "json" in fields else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _write_negated_shard(source: Path, target: Path, negations: dict[str, list[dict]]) -> int:
    """Copy ``source`` sample by sample with each sample's negations in its json; atomically; returns samples."""
    import io
    import tarfile

    from .formats import shard_samples

    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with tarfile.open(tmp, "w") as tar:
            for key, fields in shard_samples(source):
                meta = _sample_json(fields)
                meta["negations"] = negations.get(f"{source.name}#{key}", [])
                fields = {**fields, "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}
                for extension, data in fields.items():
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))
                count += 1

    atomic_write(target, write)
    stats = {"count": count, "successes": count, "negated": sum(1 for v in negations.values() if v)}
    atomic_write_text(target.with_name(target.stem + "_stats.json"), json.dumps(stats) + "\n")
    return count
