"""Read caption sources and read/write negation records.

Inputs: COCO captions JSON (+ optional COCO instances JSON -> per-image object names) with an image folder, or a
plain JSONL/CSV of (image, caption). Outputs: our JSONL records (one :class:`NegationRecord` per line) and
NegationCLIP's format (a COCO captions JSON whose kept annotations carry ``updated_caption``); both read back with
:func:`read_negation_records`. Every bad input raises :class:`DataError` naming the file and the record.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import atomic_write_text
from ..textfiles import open_text

KINDS = ("absence", "presence")
RECORD_FIELDS = ("image", "image_id", "caption", "negated_caption", "objects", "kind", "negator", "verifier")


class DataError(ValueError):
    """A bad input file or record; the message names the file and the record."""


@dataclass(frozen=True)
class CaptionItem:
    """One caption of one image. ``objects`` are the image's ground-truth object names (None when unknown)."""

    image: str
    caption: str
    image_id: int | None = None
    objects: tuple[str, ...] | None = None
    annotation_id: int | None = None


@dataclass
class CaptionSet:
    """Captions read from a source, the object vocabulary it implies, and how many were skipped."""

    items: list[CaptionItem]
    categories: list[str] = field(default_factory=list)
    skipped_bad_images: int = 0
    source: str = ""


@dataclass(frozen=True)
class NegationRecord:
    """One negated caption (schema shared by ``negclip generate`` and the trainer)."""

    image: str
    image_id: int | None
    caption: str
    negated_caption: str
    objects: list[str]
    kind: str
    negator: str
    verifier: str | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------------- helpers


def _load_json(path: str | os.PathLike, what: str):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    try:
        with open_text(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON in {what} file: {e.msg} at line {e.lineno} column {e.colno}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: {what} file is not UTF-8 text ({e.reason})") from None


def _check_caption(caption, where: str) -> str:
    if not isinstance(caption, str):
        raise DataError(f"{where}: caption must be a string, got {type(caption).__name__} {caption!r}")
    if not caption.strip():
        raise DataError(f"{where}: empty caption")
    return caption.strip()


def check_image(path: Path) -> str | None:
    """None when ``path`` is a readable image, else why not (missing, corrupt)."""
    if not path.is_file():
        return "missing image file"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"corrupt image file ({type(e).__name__}: {e})"
    return None


class _ImageChecker:
    """Checks each image once; raises on a bad one unless ``skip_bad`` (then counts it)."""

    def __init__(self, images: str | os.PathLike | None, skip_bad: bool):
        self.root = None if images is None else Path(images)
        if self.root is not None and not self.root.is_dir():
            raise DataError(f"{self.root}: image folder not found")
        self.skip_bad = skip_bad
        self.verdicts: dict[str, bool] = {}

    def ok(self, image: str, where: str) -> bool:
        if self.root is None:
            return True
        if image not in self.verdicts:
            problem = check_image(self.root / image)
            if problem and not self.skip_bad:
                raise DataError(f"{where}: {problem}: {self.root / image} (pass --skip-bad-images to skip and count)")
            self.verdicts[image] = problem is None
        return self.verdicts[image]

    @property
    def n_bad(self) -> int:
        return sum(not ok for ok in self.verdicts.values())


# ------------------------------------------------------------------------------------------------------------ COCO


def read_coco_instances(instances: str | os.PathLike) -> tuple[dict[int, tuple[str, ...]], list[str]]:
    """``({image_id: sorted object names}, category names)`` from a COCO instances JSON."""
    data = _load_json(instances, "COCO instances")
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        raise DataError(f"{instances}: not a COCO instances file (needs a 'categories' list)")
    names: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or not isinstance(cat.get("name"), str):
            raise DataError(f"{instances}: categories[{i}] needs an 'id' and a string 'name', got {cat!r}")
        names[cat["id"]] = cat["name"].strip().lower()
    per_image: dict[int, set[str]] = {}
    for i, ann in enumerate(data.get("annotations", [])):
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            raise DataError(f"{instances}: annotations[{i}] needs 'image_id' and 'category_id', got {ann!r}")
        if ann["category_id"] not in names:
            raise DataError(f"{instances}: annotations[{i}] has unknown category_id {ann['category_id']!r}")
        per_image.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
    for image in data.get("images", []):
        if isinstance(image, dict) and "id" in image:
            per_image.setdefault(image["id"], set())
    return {k: tuple(sorted(v)) for k, v in per_image.items()}, list(dict.fromkeys(names.values()))


def _coco_images(data, path) -> dict[int, str]:
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise DataError(f"{path}: not a COCO captions file (needs 'images' and 'annotations' lists)")
    files: dict[int, str] = {}
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise DataError(f"{path}: images[{i}] needs an 'id' and a string 'file_name', got {image!r}")
        files[image["id"]] = image["file_name"]
    return files


def read_coco_captions(
    captions: str | os.PathLike,
    instances: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    skip_bad_images: bool = False,
) -> CaptionSet:
    """Captions of a COCO captions JSON; with ``instances`` each item carries its image's object names.

    With ``images`` every referenced image is checked once (exists and decodes); a bad one is an error unless
    ``skip_bad_images`` (its captions are then dropped and counted in ``skipped_bad_images``).
    """
    data = _load_json(captions, "COCO captions")
    files = _coco_images(data, captions)
    objects, categories = (None, []) if instances is None else read_coco_instances(instances)
    checker = _ImageChecker(images, skip_bad_images)
    items = []
    for i, ann in enumerate(data["annotations"]):
        where = f"{captions}: annotations[{i}]" + (f" (id {ann.get('id')})" if isinstance(ann, dict) else "")
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise DataError(f"{where}: needs 'image_id' and 'caption', got {ann!r}")
        image_id = ann["image_id"]
        if image_id not in files:
            raise DataError(f"{where}: image_id {image_id!r} is not in the file's 'images' list")
        caption = _check_caption(ann["caption"], where)
        if objects is not None and image_id not in objects:
            raise DataError(f"{where}: image_id {image_id!r} is not in the instances file {instances}")
        if not checker.ok(files[image_id], where):
            continue
        items.append(
            CaptionItem(
                image=files[image_id],
                caption=caption,
                image_id=image_id,
                objects=None if objects is None else objects[image_id],
                annotation_id=ann.get("id"),
            )
        )
    return CaptionSet(items, categories, checker.n_bad, str(captions))


def read_caption_table(
    path: str | os.PathLike, images: str | os.PathLike | None = None, skip_bad_images: bool = False
) -> CaptionSet:
    """A plain JSONL (``{"image", "caption"}`` per line) or CSV (columns ``image``/``caption``; ``filepath`` and
    ``image_path`` also accepted) of captions; an optional ``objects`` field (list, or ``;``-separated in CSV)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: caption file not found")
    checker = _ImageChecker(images, skip_bad_images)
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    items = []
    for where, row in rows:
        image = next((row[k] for k in ("image", "filepath", "image_path", "file_name") if k in row), None)
        if not isinstance(image, str) or not image:
            raise DataError(f"{where}: needs a string 'image' (file name relative to the image folder), got {row!r}")
        if "caption" not in row:
            raise DataError(f"{where}: needs a 'caption', got {row!r}")
        caption = _check_caption(row["caption"], where)
        objects = row.get("objects")
        if isinstance(objects, str):
            objects = [o for o in objects.split(";") if o.strip()]
        if objects is not None and (not isinstance(objects, list) or not all(isinstance(o, str) for o in objects)):
            raise DataError(f"{where}: 'objects' must be a list of strings, got {objects!r}")
        if not checker.ok(image, where):
            continue
        image_id = row.get("image_id")
        items.append(
            CaptionItem(
                image=image,
                caption=caption,
                image_id=int(image_id) if isinstance(image_id, (int, str)) and str(image_id).isdigit() else None,
                objects=None if objects is None else tuple(sorted({o.strip().lower() for o in objects})),
            )
        )
    categories = sorted({o for item in items for o in item.objects or ()})
    return CaptionSet(items, categories, checker.n_bad, str(path))


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    with open_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n}: malformed JSON: {e.msg} at column {e.colno}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {n}: expected a JSON object, got {type(row).__name__}")
            yield f"{path}: line {n}", row


def _csv_rows(path: Path) -> Iterator[tuple[str, dict]]:
    with open_text(path, newline="") as f:
        for n, row in enumerate(csv.DictReader(f), 2):
            yield f"{path}: row {n}", row


def read_captions(
    captions: str | os.PathLike,
    instances: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    skip_bad_images: bool = False,
) -> CaptionSet:
    """COCO captions JSON (``.json``) or a plain JSONL/CSV caption table, chosen by extension."""
    if Path(captions).suffix.lower() == ".json":
        return read_coco_captions(captions, instances, images, skip_bad_images)
    caption_set = read_caption_table(captions, images, skip_bad_images)
    if instances is not None:
        raise DataError(f"{instances}: --instances goes with a COCO captions JSON, not with {captions}")
    return caption_set


# --------------------------------------------------------------------------------------------------------- records


def record_from_dict(row: dict, where: str) -> NegationRecord:
    """Validate one JSONL record."""
    missing = [k for k in ("image", "caption", "negated_caption", "kind") if k not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
    if not isinstance(row["image"], str) or not row["image"]:
        raise DataError(f"{where}: 'image' must be a non-empty string, got {row['image']!r}")
    caption = _check_caption(row["caption"], where)
    negated = _check_caption(row["negated_caption"], where + " (negated_caption)")
    if row["kind"] not in KINDS:
        raise DataError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {row['kind']!r}")
    objects = row.get("objects") or []
    if not isinstance(objects, list) or not all(isinstance(o, str) for o in objects):
        raise DataError(f"{where}: 'objects' must be a list of strings, got {objects!r}")
    image_id = row.get("image_id")
    if image_id is not None and not isinstance(image_id, int):
        raise DataError(f"{where}: 'image_id' must be an integer or null, got {image_id!r}")
    return NegationRecord(
        image=row["image"],
        image_id=image_id,
        caption=caption,
        negated_caption=negated,
        objects=objects,
        kind=row["kind"],
        negator=str(row.get("negator") or "unknown"),
        verifier=row.get("verifier"),
    )


def read_negation_records(path: str | os.PathLike) -> list[NegationRecord]:
    """Our JSONL records, or NegationCLIP's COCO JSON with ``updated_caption`` (read as absence records)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: negation records file not found")
    if path.suffix.lower() == ".json" and not _first_line_is_record(path):
        return read_negationclip_json(path)
    return [record_from_dict(row, where) for where, row in _jsonl_rows(path)]


def _first_line_is_record(path: Path) -> bool:
    """JSONL saved under a .json name: its first line alone is a record."""
    with open_text(path, errors="replace") as f:
        first = f.readline()
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and "negated_caption" in row


def read_negationclip_json(path: str | os.PathLike) -> list[NegationRecord]:
    """NegationCLIP's output: annotations that carry ``updated_caption`` become absence records."""
    data = _load_json(path, "NegationCLIP captions")
    files = _coco_images(data, path)
    records = []
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict) or "updated_caption" not in ann:
            continue
        if ann.get("image_id") not in files:
            raise DataError(f"{where}: image_id {ann.get('image_id')!r} is not in the file's 'images' list")
        records.append(
            NegationRecord(
                image=files[ann["image_id"]],
                image_id=ann["image_id"],
                caption=_check_caption(ann.get("caption"), where),
                negated_caption=_check_caption(ann["updated_caption"], where + " (updated_caption)"),
                objects=[o for o in [ann.get("negated_object")] if isinstance(o, str)],
                kind="absence",
                negator=str(ann.get("negator", "negationclip")),
                verifier=ann.get("verifier", "negationclip"),
            )
        )
    if not records:
        raise DataError(f"{path}: no annotation carries 'updated_caption' (not a NegationCLIP output file)")
    return records


def write_negation_records(records: Iterable[NegationRecord], path: str | os.PathLike) -> int:
    """Write JSONL records atomically; returns how many."""
    lines = [r.to_json() for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def write_negationclip_json(records: Iterable[NegationRecord], path: str | os.PathLike) -> int:
    """NegationCLIP's format: COCO captions JSON, one annotation per record with ``updated_caption``.

    Only absence records (true captions) are written, as NegationCLIP's file has only those. Records without an
    image id get one per distinct image file. Extra keys ``negated_object``/``negator``/``verifier`` keep our
    provenance and are ignored by NegationCLIP's loader.
    """
    image_ids: dict[str, int] = {}
    annotations = []
    for record in records:
        if record.kind != "absence":
            continue
        if record.image not in image_ids:
            image_ids[record.image] = record.image_id if record.image_id is not None else len(image_ids) + 1
        ann = {
            "id": len(annotations) + 1,
            "image_id": image_ids[record.image],
            "caption": record.caption,
            "updated_caption": record.negated_caption,
            "negator": record.negator,
            "verifier": record.verifier,
        }
        if record.objects:
            ann["negated_object"] = record.objects[0]
        annotations.append(ann)
    images = [{"id": i, "file_name": name} for name, i in image_ids.items()]
    atomic_write_text(path, json.dumps({"images": images, "annotations": annotations}, ensure_ascii=False))
    return len(annotations)
