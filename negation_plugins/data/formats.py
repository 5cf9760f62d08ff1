"""Lazy readers for the training data formats people hold, one :class:`Row` at a time.

A row is one image with one caption and the negated captions that go with it: ``absence`` ones stay true of the
image, ``presence`` ones are false. Every reader is a generator over its file(s) whose memory does not grow with the
number of rows (CC-Neg's ``.pt`` is one pickle and is the exception: it is loaded whole, ~228k entries).

========================  =====================================================================================
format (``--train-format``)  recognized by / layout
========================  =====================================================================================
``jsonl``                 our records (one JSON object per line); consecutive lines of one (image, caption) group
``negationclip``          a ``.json`` COCO captions file whose annotations carry ``updated_caption``
``negcap``                NegBench NegCap CSV: ``filepath, caption, negative_captions`` (a Python-literal list cell)
``negmcq``                NegBench NegMCQ CSV: ``image_path, correct_answer, caption_0..caption_3,
                          correct_answer_template`` -> the correct caption with the 3 others as false captions
``webdataset``            img2dataset shards by brace pattern (``cc12m-{0000..0003}.tar``): ``__key__``, ``jpg``,
                          ``txt``, ``json``; image named ``SHARD.tar#KEY``; negations from the ``json``
                          (``negations``: our records, written by ``negclip generate --shards``; or NegCap's
                          ``negative_captions``)
``ccneg``                 CC-Neg ``.pt`` dict (``image_paths``, ``annotations``): caption true, negative-prompt false
========================  =====================================================================================

A bad row is a :class:`~negation_plugins.data.io.DataError` naming the file and row, or, with a :class:`Skips`
that skips, counted (the first few messages kept for the report).
"""

from __future__ import annotations

import ast
import csv
import io as _io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..textfiles import open_text
from .io import KINDS, DataError, NegationRecord, read_negationclip_json, record_from_dict

FORMATS = ("jsonl", "negationclip", "negcap", "negmcq", "webdataset", "ccneg")
NEGCAP_COLUMNS = ("filepath", "caption", "negative_captions")
NEGMCQ_COLUMNS = ("image_path", "correct_answer", "caption_0", "caption_1", "caption_2", "caption_3",
                  "correct_answer_template")  # fmt: skip
CCNEG_EVAL_SIZE = 40_000  # CC-Neg's last 40,000 entries are its evaluation split
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SHARD_SEPARATOR = "#"


@dataclass(frozen=True)
class Row:
    """One image + caption with its negated captions (see the module docstring)."""

    image: str
    caption: str
    absence: tuple[str, ...] = ()
    presence: tuple[str, ...] = ()
    absent_objects: tuple[str, ...] = ()
    present_objects: tuple[str, ...] = ()
    image_id: int | None = None
    image_bytes: bytes | None = field(default=None, repr=False)  # a shard sample's encoded image
    negator: str = "unknown"

    def records(self) -> list[NegationRecord]:
        """The row as our JSONL records (absence first)."""
        return [
            NegationRecord(self.image, self.image_id, self.caption, text, list(objects), kind, self.negator, None)
            for kind, texts, objects in (
                ("absence", self.absence, self.absent_objects),
                ("presence", self.presence, self.present_objects),
            )  # fmt: skip
            for text in texts
        ]


class Skips:
    """Bad rows: raise at the first (default) or count them, keeping the first ``keep`` messages."""

    def __init__(self, skip_bad: bool = False, keep: int = 20):
        self.skip_bad, self.keep = skip_bad, keep
        self.count = 0
        self.messages: list[str] = []

    def bad(self, where: str, why: str) -> None:
        if not self.skip_bad:
            raise DataError(f"{where}: {why}")
        self.count += 1
        if len(self.messages) < self.keep:
            self.messages.append(f"{where}: {why}")


# ------------------------------------------------------------------------------------------------- which format


def expand_braces(pattern: str) -> list[str]:
    """Brace expansion as webdataset/open_clip do it: ``a-{0000..0003}.tar``, ``{a,b}.tar``; ``::`` joins lists."""
    if "::" in pattern:
        return [path for part in pattern.split("::") for path in expand_braces(part)]
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, body, tail = pattern[: match.start()], match[1], pattern[match.end() :]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        first, last = numeric[1], numeric[2]
        width = len(first) if first.startswith("0") or len(first) == len(last) else 0
        step = 1 if int(last) >= int(first) else -1
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    else:
        choices = body.split(",")
    return [path for choice in choices for path in expand_braces(head + choice + tail)]


def is_shard_pattern(source: str) -> bool:
    """Webdataset shards: a brace pattern or a ``.tar``."""
    return "{" in source or source.endswith(".tar")


def detect_format(source: str) -> str:
    """The format of ``source`` from its name and content (columns of a CSV, keys of a JSON)."""
    if is_shard_pattern(source):
        return "webdataset"
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{source}: training data file not found")
    suffix = path.suffix.lower()
    if suffix == ".pt":
        return "ccneg"
    if suffix in (".csv", ".tsv"):
        columns = set(csv_columns(path))
        if set(NEGCAP_COLUMNS) <= columns:
            return "negcap"
        if set(NEGMCQ_COLUMNS) <= columns:
            return "negmcq"
        raise DataError(
            f"{source}: a CSV with columns {', '.join(sorted(columns)) or '(none)'} is neither NegBench NegCap "
            f"({', '.join(NEGCAP_COLUMNS)}) nor NegMCQ ({', '.join(NEGMCQ_COLUMNS)})"
        )
    if suffix == ".json":
        with open_text(path, errors="replace") as f:
            first = f.readline()
        try:
            first_is_record = "negated_caption" in json.loads(first)
        except (ValueError, TypeError):
            first_is_record = False
        return "jsonl" if first_is_record else "negationclip"
    return "jsonl"


def csv_columns(path: Path) -> list[str]:
    with open_text(path, newline="") as f:
        return [c.strip() for c in next(csv.reader(f, delimiter=_delimiter(path)), [])]


def _delimiter(path: Path) -> str:
    """Tab for ``.tsv`` or a header line with tabs and no commas (open_clip's default separator), else comma."""
    if path.suffix.lower() == ".tsv":
        return "\t"
    with open_text(path, errors="replace") as f:
        header = f.readline()
    return "\t" if "\t" in header and "," not in header else ","


def source_units(source: str, fmt: str | None = None) -> list[tuple[str, str]]:
    """``(file, format)`` of every file a source names: each shard of a brace pattern, else the file; ``::`` joins
    sources (``negcap.csv::negmcq.csv``, as open_clip joins shard lists)."""
    units = []
    for part in source.split("::"):
        part_fmt = fmt or detect_format(part)
        if part_fmt == "webdataset":
            paths = expand_braces(part)
            missing = [p for p in paths if not Path(p).is_file()]
            if missing:
                raise DataError(f"{part}: {len(missing)} of {len(paths)} shard(s) not found, e.g. {missing[0]}")
            units += [(path, part_fmt) for path in paths]
        elif not Path(part).is_file():
            raise DataError(f"{part}: training data file not found")
        else:
            units.append((part, part_fmt))
    return units


def source_problem(source: str) -> str | None:
    """What is wrong with a ``--train`` source (a file or shard missing, a CSV of unknown columns), or None."""
    try:
        source_units(source)
    except DataError as error:
        return str(error)
    return None


def read_rows(source: str, fmt: str | None = None, skips: Skips | None = None, split: str = "train") -> Iterator[Row]:
    """Every row of ``source`` (a file, a brace pattern of shards, ``::``-joined sources), lazily."""
    if fmt is not None and fmt not in FORMATS:
        raise DataError(f"--train-format {fmt!r}: expected one of {', '.join(FORMATS)}")
    skips = skips if skips is not None else Skips()
    for unit, unit_fmt in source_units(source, fmt):
        yield from read_unit(unit, unit_fmt, skips, split=split)


def read_unit(path: str, fmt: str, skips: Skips, start: int = 0, split: str = "train") -> Iterator[Row]:
    """Rows of one file (one shard), from row number ``start`` (0-based) on."""
    if fmt == "ccneg":
        yield from _ccneg(Path(path), skips, start, split)
    else:
        readers = {"jsonl": _jsonl, "negationclip": _negationclip, "negcap": _negcap, "negmcq": _negmcq,
                   "webdataset": _shard}  # fmt: skip
        yield from readers[fmt](Path(path), skips, start)


# ---------------------------------------------------------------------------------------------------------- readers


def _skip(rows: Iterator, start: int) -> Iterator:
    for number, row in enumerate(rows):
        if number >= start:
            yield row


def _jsonl(path: Path, skips: Skips, start: int) -> Iterator[Row]:
    """Consecutive lines of one (image, caption) form one row."""
    return _skip(_group_records(_jsonl_records(path, skips)), start)


def _jsonl_records(path: Path, skips: Skips) -> Iterator[NegationRecord]:
    with open_text(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}: line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                skips.bad(where, f"malformed JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(row, dict):
                skips.bad(where, f"expected a JSON object, got {type(row).__name__}")
                continue
            try:
                yield record_from_dict(row, where)
            except DataError as e:
                skips.bad(where, str(e).removeprefix(where + ": "))


def _group_records(records) -> Iterator[Row]:
    group: list[NegationRecord] = []
    for record in records:
        if group and (record.image, record.caption) != (group[0].image, group[0].caption):
            yield _row_of(group)
            group = []
        group.append(record)
    if group:
        yield _row_of(group)


def _row_of(records: list[NegationRecord]) -> Row:
    by_kind = {kind: [r for r in records if r.kind == kind] for kind in KINDS}
    return Row(
        image=records[0].image,
        caption=records[0].caption,
        absence=tuple(r.negated_caption for r in by_kind["absence"]),
        presence=tuple(r.negated_caption for r in by_kind["presence"]),
        absent_objects=tuple(dict.fromkeys(o for r in by_kind["absence"] for o in r.objects)),
        present_objects=tuple(dict.fromkeys(o for r in by_kind["presence"] for o in r.objects)),
        image_id=records[0].image_id,
        negator=records[0].negator,
    )


def _negationclip(path: Path, skips: Skips, start: int) -> Iterator[Row]:
    """One JSON document: read whole (use JSONL for data that does not fit in memory)."""
    return _skip(_group_records(read_negationclip_json(path)), start)


def _csv_rows(path: Path, columns: tuple[str, ...], what: str) -> Iterator[tuple[str, dict]]:
    with open_text(path, newline="") as f:
        reader = csv.DictReader(f, delimiter=_delimiter(path))
        reader.fieldnames = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in columns if c not in reader.fieldnames]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)} of a {what} CSV ({', '.join(columns)})")
        for number, row in enumerate(reader, 2):
            yield f"{path}: row {number}", row


def _text(row: dict, column: str) -> str | None:
    value = row.get(column)
    return value.strip() if isinstance(value, str) and value.strip() else None


def parse_caption_list(cell: str) -> list[str]:
    """NegBench's ``negative_captions`` cell: ``str(list)`` of captions, read with :func:`ast.literal_eval`."""
    try:
        value = ast.literal_eval(cell.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"negative_captions is not a Python list literal: {cell[:80]!r}") from None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"negative_captions must be a list of strings, got {cell[:80]!r}")
    return [v.strip() for v in value if v.strip()]


def _negcap(path: Path, skips: Skips, start: int) -> Iterator[Row]:
    for where, row in _skip(_csv_rows(path, NEGCAP_COLUMNS, "NegBench NegCap"), start):
        image, caption, cell = _text(row, "filepath"), _text(row, "caption"), row.get("negative_captions") or ""
        if not image or not caption:
            skips.bad(where, "empty filepath or caption")
            continue
        try:
            negated = parse_caption_list(cell)
        except ValueError as e:
            skips.bad(where, str(e))
            continue
        if not negated:
            skips.bad(where, "negative_captions holds no caption")
            continue
        yield Row(image=image, caption=caption, absence=tuple(negated), negator="negbench")


def _negmcq(path: Path, skips: Skips, start: int) -> Iterator[Row]:
    from ..benchmarks.mcq import _parse_row

    for number, (where, row) in _skip(enumerate(_csv_rows(path, NEGMCQ_COLUMNS, "NegBench NegMCQ"), 1), start):
        question, why = _parse_row(number, row)
        if question is None:
            skips.bad(where, why)
            continue
        true = question.captions[question.correct_answer]
        false = tuple(c for i, c in enumerate(question.captions) if i != question.correct_answer)
        yield Row(image=question.image_path, caption=true, presence=false, negator="negbench-mcq")


def _ccneg(path: Path, skips: Skips, start: int, split: str = "train") -> Iterator[Row]:
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file, said in one line
        raise DataError(f"{path}: not a loadable CC-Neg file ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("image_paths"), (list, tuple)):
        raise DataError(f"{path}: a CC-Neg file is a dict with 'image_paths' and 'annotations' lists")
    paths, annotations = data["image_paths"], data.get("annotations")
    if not isinstance(annotations, (list, tuple)) or len(annotations) != len(paths):
        raise DataError(f"{path}: 'annotations' must be a list as long as 'image_paths' ({len(paths)})")
    n_train = len(paths) - CCNEG_EVAL_SIZE
    if split == "train" and n_train <= 0:
        raise DataError(f"{path}: {len(paths)} entries; CC-Neg's last {CCNEG_EVAL_SIZE} are its eval split")
    span = range(0, n_train) if split == "train" else range(max(n_train, 0), len(paths)) if split == "eval" else (
        range(len(paths)))  # fmt: skip
    for index in span[start:]:
        where = f"{path}: entry {index}"
        image, annotation = paths[index], annotations[index]
        try:
            caption = annotation["json"]["caption"].strip()
            negated = annotation["sop_data"]["negative-prompt"].strip()
        except (KeyError, TypeError, AttributeError):
            skips.bad(where, "needs ['json']['caption'] and ['sop_data']['negative-prompt'] strings")
            continue
        if not isinstance(image, str) or not image or not caption or not negated:
            skips.bad(where, "empty image path, caption or negative-prompt")
            continue
        yield Row(image=image, caption=caption, presence=(negated,), negator="cc-neg")


# ----------------------------------------------------------------------------------------------------- webdataset


def shard_samples(path: Path, skips: Skips | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` per sample of a webdataset tar, in order (webdataset's grouping: the key is
    the member name up to the first dot of its base name)."""
    skips = skips if skips is not None else Skips()
    key, fields = None, {}
    try:
        with tarfile.open(path, mode="r|*") as tar:  # a stream: no member list held
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, dot, extension = base.partition(".")
                if not dot:
                    continue
                sample_key = f"{folder}/{stem}" if folder else stem
                if sample_key != key and key is not None:
                    yield key, fields
                    fields = {}
                key = sample_key
                fields[extension.lower()] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        skips.bad(f"{path}", f"unreadable tar shard ({type(e).__name__}: {e}); samples after this point lost")
    if key is not None:
        yield key, fields


def shard_caption(fields: dict[str, bytes], meta: dict) -> str | None:
    if "txt" in fields:
        return fields["txt"].decode("utf-8", errors="replace").strip() or None
    caption = meta.get("caption")
    return caption.strip() if isinstance(caption, str) and caption.strip() else None


def _shard(path: Path, skips: Skips, start: int) -> Iterator[Row]:
    for number, (key, fields) in enumerate(shard_samples(path, skips)):
        if number < start:
            continue
        where = f"{path}: sample {key}"
        image = next((fields[e] for e in IMAGE_EXTENSIONS if e in fields), None)
        try:
            meta = json.loads(fields["json"]) if "json" in fields else {}
        except (ValueError, UnicodeDecodeError):
            skips.bad(where, "malformed .json")
            continue
        caption = shard_caption(fields, meta if isinstance(meta, dict) else {})
        if image is None or caption is None:
            skips.bad(where, f"needs an image ({'/'.join(IMAGE_EXTENSIONS)}) and a caption (.txt or json caption)")
            continue
        try:
            row = _shard_row(f"{path.name}{SHARD_SEPARATOR}{key}", caption, meta, image, where)
        except DataError as e:
            skips.bad(where, str(e).removeprefix(where + ": "))
            continue
        yield row


def _shard_row(image: str, caption: str, meta: dict, image_bytes: bytes, where: str) -> Row:
    """Negations from the sample's json: ``negations`` (our records without image/caption) or ``negative_captions``
    (NegCap's true negated captions); a sample without either is a caption only (for ``negclip generate``)."""
    if "negative_captions" in meta:
        cell = meta["negative_captions"]
        try:
            negated = parse_caption_list(cell) if isinstance(cell, str) else parse_caption_list(repr(cell))
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        return Row(image=image, caption=caption, absence=tuple(negated), image_bytes=image_bytes, negator="negbench")
    records = [
        record_from_dict({"image": image, "caption": caption, **n}, f"{where}: negations[{i}]")
        for i, n in enumerate(meta.get("negations") or [])
    ]
    if not records:
        return Row(image=image, caption=caption, image_bytes=image_bytes)
    row = _row_of(records)
    return Row(**{**row.__dict__, "image_bytes": image_bytes})


def decode_image(encoded: bytes):
    """A shard sample's encoded image as an RGB PIL image."""
    from PIL import Image

    with Image.open(_io.BytesIO(encoded)) as image:
        return image.convert("RGB")


def shard_size(path: str) -> int | None:
    """Samples in a shard from img2dataset's ``{shard}_stats.json`` (``successes``), if it is there."""
    stats = Path(path).with_name(Path(path).stem + "_stats.json")
    try:
        return int(json.loads(stats.read_text())["successes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def count_rows(path: str, fmt: str, skips: Skips | None = None) -> int:
    """Rows in one unit (one pass, constant memory; a shard's ``_stats.json`` when present)."""
    if fmt == "webdataset":
        size = shard_size(path)
        if size is not None:
            return size
    if fmt == "jsonl":
        return _count_jsonl_groups(Path(path))
    return sum(1 for _ in read_unit(path, fmt, skips or Skips(skip_bad=True)))


def _count_jsonl_groups(path: Path) -> int:
    """Runs of lines with one (image, caption), as :func:`_group_records` forms rows, without validating the
    records (a bad line counts as a row here; the stream refills an epoch that comes short)."""
    count, previous = 0, None
    with open_text(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = (record.get("image"), record.get("caption"))
            except (ValueError, AttributeError):
                key = object()
            if key != previous:
                count += 1
            previous = key
    return count
