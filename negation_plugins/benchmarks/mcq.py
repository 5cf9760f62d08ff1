"""NegBench-style multiple-choice negation benchmark, and affirmative retrieval Recall@1 on a COCO captions file.

MCQ: each row of a NegBench MCQ CSV (``image_path, correct_answer, caption_0..caption_3, correct_answer_template``)
is one image with 4 captions; the model answers with the caption of highest cosine similarity to the image.
Accuracy is reported overall and per template type (positive -> affirmation, negative -> negation, hybrid).
A CSV with the optional ``phrasing_split`` column (the synthetic world's: ``train`` / ``held-out`` phrasing family of
each negation and hybrid item, see :mod:`negation_plugins.phrasings`) also gets ``by_phrasing_split``: per split, the
same figures over that split's negation and hybrid items plus all affirmation items (which have no negation phrasing).
The same code scores the public NegBench CSVs and the synthetic world's ``mcq_*.csv``.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..factory import ClipBundle
from ..hookspecs import hookimpl
from . import Benchmark

MCQ_COLUMNS = (
    "image_path",
    "correct_answer",
    "caption_0",
    "caption_1",
    "caption_2",
    "caption_3",
    "correct_answer_template",
)
TYPE_NAMES = {
    "positive": "affirmation",
    "negative": "negation",
    "hybrid": "hybrid",
    "affirmation": "affirmation",
    "negation": "negation",
}
TYPES = ("affirmation", "negation", "hybrid")


class BenchmarkDataError(ValueError):
    """A benchmark file is malformed; the message names the file and row."""


@dataclass(frozen=True)
class McqRow:
    row: int  # 1-based data row number (the header is not counted)
    image_path: str
    captions: tuple[str, str, str, str]
    correct_answer: int
    type: str  # affirmation | negation | hybrid
    phrasing: str = ""  # optional columns: the negation phrasing family and its split (train | held-out)
    phrasing_split: str = ""


def read_mcq_csv(path: str | os.PathLike) -> list[McqRow]:
    """Parse and validate a NegBench MCQ CSV; a bad row raises :class:`BenchmarkDataError` naming it."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MCQ_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise BenchmarkDataError(
                f"{path}: missing column(s) {', '.join(missing)}; a NegBench MCQ CSV has {', '.join(MCQ_COLUMNS)} "
                f"(found: {', '.join(reader.fieldnames or []) or 'no header'})"
            )
        rows = [_parse_row(path, number, record) for number, record in enumerate(reader, start=1)]
    if not rows:
        raise BenchmarkDataError(f"{path}: no data rows")
    return rows


def _parse_row(path: Path, number: int, record: dict) -> McqRow:
    where = f"{path}: row {number}"
    empty = [c for c in MCQ_COLUMNS if not (record.get(c) or "").strip()]
    if empty:
        raise BenchmarkDataError(f"{where}: empty or missing value for {', '.join(empty)}")
    try:
        answer = int(float(record["correct_answer"]))
    except ValueError:
        raise BenchmarkDataError(f"{where}: correct_answer {record['correct_answer']!r} is not a number 0-3") from None
    if not 0 <= answer <= 3:
        raise BenchmarkDataError(
            f"{where}: correct_answer {answer} is out of range (captions are caption_0..caption_3)"
        )
    template = record["correct_answer_template"].strip().lower()
    if template not in TYPE_NAMES:
        raise BenchmarkDataError(
            f"{where}: correct_answer_template {record['correct_answer_template']!r} is not positive, negative or hybrid"
        )
    captions = tuple(record[f"caption_{i}"].strip() for i in range(4))
    phrasing, split = ((record.get(c) or "").strip() for c in ("phrasing", "phrasing_split"))
    return McqRow(number, record["image_path"].strip(), captions, answer, TYPE_NAMES[template], phrasing, split)


def resolve_image(image_path: str, images: str | os.PathLike | None) -> Path:
    """An absolute path stays; a relative one is taken under the ``images`` root (or the working directory)."""
    path = Path(image_path)
    return path if path.is_absolute() or images is None else Path(images) / path


def mcq_predictions(image_embeds: torch.Tensor, option_embeds: torch.Tensor) -> torch.Tensor:
    """Index of the most similar option per item: ``image_embeds`` (N, D), ``option_embeds`` (N, K, D)."""
    return torch.einsum("nd,nkd->nk", image_embeds, option_embeds).argmax(dim=1)


def mcq_accuracy(predictions, answers, types) -> dict:
    """Overall and per-type accuracy (a type with no items reports None) plus counts."""
    predictions, answers = torch.as_tensor(predictions), torch.as_tensor(answers)
    correct = (predictions == answers).float()
    result = {"accuracy": round(float(correct.mean()), 4) if len(correct) else None, "n_items": len(correct)}
    for kind in TYPES:
        mask = torch.tensor([t == kind for t in types], dtype=torch.bool)
        result[kind] = round(float(correct[mask].mean()), 4) if mask.any() else None
        result[f"n_{kind}"] = int(mask.sum())
    return result


def run_mcq(
    clip: ClipBundle,
    csv: str | os.PathLike,
    images: str | os.PathLike | None = None,
    *,
    skip_missing: bool = False,
    batch_size: int = 256,
    progress: bool = True,
) -> dict:
    """Score ``clip`` on an MCQ CSV. Missing images are an error unless ``skip_missing`` (then counted)."""
    rows = read_mcq_csv(csv)
    kept, missing = [], []
    for row in rows:
        (kept if resolve_image(row.image_path, images).is_file() else missing).append(row)
    if missing and not skip_missing:
        first = missing[0]
        raise BenchmarkDataError(
            f"{csv}: row {first.row}: image {resolve_image(first.image_path, images)} does not exist "
            f"({len(missing)} of {len(rows)} rows have no image; pass images=<root> or skip_missing=True)"
        )
    if not kept:
        raise BenchmarkDataError(f"{csv}: none of the {len(rows)} rows has an existing image")

    image_embeds = _embed_images(clip, [resolve_image(r.image_path, images) for r in kept], batch_size, progress)
    texts = [c for r in kept for c in r.captions]
    option_embeds = clip.encode_text(texts, batch_size=batch_size).reshape(len(kept), 4, -1)
    predictions = mcq_predictions(image_embeds, option_embeds.to(image_embeds.dtype))
    result = mcq_accuracy(predictions.cpu(), [r.correct_answer for r in kept], [r.type for r in kept])
    splits = sorted({r.phrasing_split for r in kept} - {""})
    if splits:
        result["by_phrasing_split"] = {
            split: mcq_accuracy(
                *zip(
                    *(
                        (p, r.correct_answer, r.type)
                        for p, r in zip(predictions.tolist(), kept)
                        if r.type == "affirmation" or r.phrasing_split == split
                    )
                )
            )
            for split in splits
        }
    result["n_skipped"] = len(missing)
    return result


def _embed_images(clip: ClipBundle, paths: list[Path], batch_size: int, progress: bool) -> torch.Tensor:
    """Embed each distinct image once (MCQ files repeat images across rows)."""
    unique = list(dict.fromkeys(paths))
    chunks = []
    for start in tqdm(range(0, len(unique), batch_size), desc="embedding images", disable=not progress):
        batch = []
        for path in unique[start : start + batch_size]:
            with Image.open(path) as im:
                batch.append(im.convert("RGB"))
        chunks.append(clip.encode_image(batch, batch_size=batch_size))
    embeds = torch.cat(chunks)
    index = {p: i for i, p in enumerate(unique)}
    return embeds[torch.tensor([index[p] for p in paths])]


def run_retrieval(
    clip: ClipBundle,
    captions: str | os.PathLike,
    images: str | os.PathLike,
    *,
    captions_per_image: int | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> dict:
    """Affirmative retrieval Recall@1 on a COCO captions file, both directions.

    image->text: hit when the top caption is one of the image's own; text->image: hit when the top image is the
    caption's image. ``captions_per_image`` keeps only the first k captions of each image (None: all).
    """
    data = json.loads(Path(captions).read_text())
    by_image: dict[int, list[str]] = {}
    for number, ann in enumerate(data.get("annotations", []), start=1):
        if "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise BenchmarkDataError(f"{captions}: annotation {number} lacks an image_id or a caption string")
        by_image.setdefault(ann["image_id"], []).append(ann["caption"])
    entries = [img for img in data.get("images", []) if img.get("id") in by_image]
    if not entries:
        raise BenchmarkDataError(f"{captions}: no images with captions")
    missing = [img["file_name"] for img in entries if not (Path(images) / img["file_name"]).is_file()]
    if missing:
        raise BenchmarkDataError(f"{captions}: {len(missing)} image file(s) missing under {images}, e.g. {missing[0]}")

    image_embeds = _embed_images(clip, [Path(images) / img["file_name"] for img in entries], batch_size, progress)
    texts, owner = [], []
    for i, img in enumerate(entries):
        own = by_image[img["id"]][:captions_per_image] if captions_per_image else by_image[img["id"]]
        texts += own
        owner += [i] * len(own)
    text_embeds = clip.encode_text(texts, batch_size=batch_size).to(image_embeds.dtype)
    owner = torch.tensor(owner)
    similarity = image_embeds @ text_embeds.T
    image_to_text = owner[similarity.argmax(dim=1).cpu()] == torch.arange(len(entries))
    text_to_image = similarity.argmax(dim=0).cpu() == owner
    return {
        "image_to_text_r1": round(float(image_to_text.float().mean()), 4),
        "text_to_image_r1": round(float(text_to_image.float().mean()), 4),
        "n_images": len(entries),
        "n_captions": len(texts),
    }


class McqBenchmark(Benchmark):
    name = "mcq"
    description = "NegBench multiple-choice negation (CSV): overall + affirmation/negation/hybrid accuracy"

    def run(
        self, clip: ClipBundle, *, csv: str, images: str | None = None, skip_missing: bool = False, **options
    ) -> dict:
        return run_mcq(clip, csv, images, skip_missing=skip_missing, **options)


class RetrievalBenchmark(Benchmark):
    name = "retrieval-r1"
    description = "affirmative image<->text Recall@1 on a COCO captions JSON + image folder"

    def run(self, clip: ClipBundle, *, captions: str, images: str, **options) -> dict:
        return run_retrieval(clip, captions, images, **options)


@hookimpl
def register_benchmarks(register):
    register(McqBenchmark())
    register(RetrievalBenchmark())
