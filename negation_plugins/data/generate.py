"""The offline generation loop behind ``negclip generate``: propose -> verify -> rewrite, resumable by chunks.

Output goes to ``OUT.partial`` (JSONL) in whole chunks, each appended, flushed and fsynced before the sidecar
``OUT.progress.json`` (written atomically) records how many chunks and bytes are done. A restarted run truncates
the partial file to the recorded size (dropping a half-written chunk) and continues with the next chunk; every
chunk has its own seeded RNG, so a resumed run writes exactly what an uninterrupted one does. At the end the
partial file is renamed to OUT (or converted to NegationCLIP's JSON when OUT ends in ``.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from ..atomic import atomic_write_text
from .io import (
    KINDS,
    CaptionItem,
    CaptionSet,
    DataError,
    NegationRecord,
    read_negation_records,
    write_negationclip_json,
)
from .negators import Negator, presence_candidates
from .verifiers import Verifier


def _progress_paths(out: Path) -> tuple[Path, Path]:
    return out.with_name(out.name + ".partial"), out.with_name(out.name + ".progress.json")


def _fingerprint(caption_set: CaptionSet, settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for item in caption_set.items:
        digest.update(f"{item.image}\t{item.caption}\t{item.objects}\n".encode())
    return digest.hexdigest()


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
) -> dict:
    """Write negation records for every caption to ``out``; resumes a killed run. Returns the summary.

    ``options`` (the negator's/verifier's settings) join the fingerprint that a resumed run must match.
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
    if verifier is not None:
        verifier.set_vocabulary(vocabulary)
    negator.prepare(caption_set.items, vocabulary)
    partial, progress_file = _progress_paths(out)
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
    state = {"fingerprint": fingerprint, "chunks_done": 0, "bytes": 0, "stats": {}, "seconds": 0.0}
    if overwrite:
        partial.unlink(missing_ok=True)
        progress_file.unlink(missing_ok=True)
    elif out.exists():
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    if progress_file.exists() and partial.exists():
        try:
            saved = json.loads(progress_file.read_text())
        except json.JSONDecodeError:
            raise DataError(
                f"{progress_file}: corrupt progress file; delete it (and {partial}) to start over"
            ) from None
        if saved.get("fingerprint") != fingerprint:
            raise DataError(
                f"{progress_file}: an unfinished run with different inputs or settings; pass --overwrite to start over"
            )
        state = saved
        with open(partial, "r+b") as f:
            f.truncate(state["bytes"])
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial.unlink(missing_ok=True)
        partial.touch()
    stats = Counter(state["stats"])
    items = caption_set.items
    n_chunks = (len(items) + chunk_size - 1) // chunk_size
    resumed_from = state["chunks_done"]
    started = time.perf_counter()
    bar = tqdm(total=len(items), initial=min(len(items), resumed_from * chunk_size), unit="caption",
               desc="generate", disable=not progress)  # fmt: skip
    try:
        with open(partial, "ab") as f:
            for k in range(resumed_from, n_chunks):
                chunk = items[k * chunk_size : (k + 1) * chunk_size]
                rng = random.Random(f"{seed}:{k}")
                records = generate_chunk(chunk, vocabulary, negator, verifier, kinds, rng, stats)
                for record in records:
                    stats[record.kind] += 1
                f.write("".join(r.to_json() + "\n" for r in records).encode())
                f.flush()
                os.fsync(f.fileno())
                state.update(chunks_done=k + 1, bytes=f.tell(), stats=_merged_stats(stats, negator, verifier))
                state["seconds"] = state.get("seconds", 0.0) + (time.perf_counter() - started)
                started = time.perf_counter()
                atomic_write_text(progress_file, json.dumps(state))
                bar.update(len(chunk))
                bar.set_postfix(records=stats["absence"] + stats["presence"])
    except BaseException:
        if state["chunks_done"] == 0:  # nothing worth resuming: leave no partial output behind
            partial.unlink(missing_ok=True)
            progress_file.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    final_stats = _merged_stats(stats, negator, verifier)
    if not stats["absence"] + stats["presence"]:  # nothing to negate: say why instead of writing an empty file
        partial.unlink(missing_ok=True)
        progress_file.unlink(missing_ok=True)
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(final_stats.items()) if v) or "no reason recorded"
        raise DataError(
            f"{caption_set.source or 'captions'}: none of the {len(items)} captions could be negated "
            f"({reasons}); check --vocabulary/--kinds; nothing written to {out}"
        )
    if out.suffix.lower() == ".json":
        records = read_negation_records(partial)
        written = write_negationclip_json(records, out)
        final_stats["dropped_presence_for_negationclip_json"] = len(records) - written
        partial.unlink()
    else:
        os.replace(partial, out)
    progress_file.unlink(missing_ok=True)
    seconds = max(state.get("seconds", 0.0), 1e-9)
    return {
        "out": str(out),
        "captions": len(items),
        "skipped_bad_images": caption_set.skipped_bad_images,
        "resumed_from_chunk": resumed_from,
        "seconds": round(seconds, 3),
        "captions_per_second": round(len(items) / seconds, 1),
        **final_stats,
    }


def _merged_stats(stats: Counter, negator: Negator, verifier: Verifier | None) -> dict:
    """Our counts plus the negator's/verifier's (added to what a resumed run had saved under the same keys)."""
    merged = dict(stats)
    for prefix, part in (("negator", negator), ("verifier", verifier)):
        for key, value in part.stats.items() if part is not None else ():
            merged[f"{prefix}_{key}"] = merged.get(f"{prefix}_{key}", 0) + value
    return merged
