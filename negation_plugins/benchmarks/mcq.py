"""NegBench-style multiple-choice negation benchmark (``mcq``).

Each row of a NegBench MCQ CSV (``image_path, correct_answer, caption_0..caption_3, correct_answer_template``)
is one image with 4 captions; the model answers with the caption of highest cosine similarity to the image.
Accuracy is reported overall and per template type (positive -> affirmation, negative -> negation, hybrid).
A CSV with the optional ``phrasing_split`` column (the synthetic world's: ``train`` / ``held-out`` phrasing family of
each negation and hybrid item, see :mod:`negation_plugins.phrasings`) also gets ``by_phrasing_split``: per split, the
same figures over that split's negation and hybrid items plus all affirmation items (which have no negation phrasing),
and ``by_phrasing``: accuracy over each family's negation and hybrid items (where generalization fails).
The same code scores the public NegBench CSVs and the synthetic world's ``mcq_*.csv``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..factory import ClipBundle
from ..hookspecs import hookimpl
from ..textfiles import open_text
from . import Benchmark
from .common import BenchmarkDataError, Encoder, RowProblems, encoder_for, resolve_image

MCQ_COLUMNS = (
    "image_path",
    "correct_answer",
    "caption_0",
    "caption_1",
    "caption_2",
    "caption_3",
    "correct_answer_template",
)
PHRASING_COLUMNS = ("phrasing", "phrasing_split")  # optional, after NegBench's (the synthetic world writes them)
TYPE_NAMES = {
    "positive": "affirmation",
    "negative": "negation",
    "hybrid": "hybrid",
    "affirmation": "affirmation",
    "negation": "negation",
}
TYPES = ("affirmation", "negation", "hybrid")


@dataclass(frozen=True)
class McqRow:
    row: int  # 1-based data row number (the header is not counted)
    image_path: str
    captions: tuple[str, str, str, str]
    correct_answer: int
    type: str  # affirmation | negation | hybrid
    phrasing: str = ""  # the negation phrasing family and its split (train | held-out), when the CSV has them
    phrasing_split: str = ""


def read_mcq_csv(path: str | os.PathLike, problems: RowProblems | None = None) -> list[McqRow]:
    """Parse and validate a NegBench MCQ CSV. A bad row goes to ``problems`` (default: raise
    :class:`BenchmarkDataError` naming the file and row; with ``skip_bad`` it is counted and left out)."""
    path = Path(path)
    problems = problems if problems is not None else RowProblems(path)
    with open_text(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MCQ_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise BenchmarkDataError(
                f"{path}: missing column(s) {', '.join(missing)}; a NegBench MCQ CSV has {', '.join(MCQ_COLUMNS)} "
                f"(found: {', '.join(reader.fieldnames or []) or 'no header'})"
            )
        rows, n_read = [], 0
        for number, record in enumerate(reader, start=1):
            n_read += 1
            row, why = _parse_row(number, record)
            if row is None:
                problems.bad(number, why)
            else:
                rows.append(row)
    if not n_read:
        raise BenchmarkDataError(f"{path}: no data rows")
    return rows


def _parse_row(number: int, record: dict) -> tuple[McqRow | None, str]:
    """``(row, "")`` or ``(None, what is wrong)``."""
    empty = [c for c in MCQ_COLUMNS if not (record.get(c) or "").strip()]
    if empty:
        return None, f"empty or missing value for {', '.join(empty)}"
    try:
        value = float(record["correct_answer"])
    except ValueError:
        return None, f"correct_answer {record['correct_answer']!r} is not a number 0-3"
    if not value.is_integer():  # "1.0" (a spreadsheet's export) is 1; "1.7" names no caption
        return None, f"correct_answer {record['correct_answer']!r} is not a whole number 0-3"
    answer = int(value)
    if not 0 <= answer <= 3:
        return None, f"correct_answer {answer} is out of range (captions are caption_0..caption_3)"
    template = record["correct_answer_template"].strip().lower()
    if template not in TYPE_NAMES:
        return None, (
            f"correct_answer_template {record['correct_answer_template']!r} is not positive, negative or hybrid"
        )
    captions = tuple(record[f"caption_{i}"].strip() for i in range(4))
    phrasing, split = ((record.get(c) or "").strip() for c in PHRASING_COLUMNS)
    return McqRow(number, record["image_path"].strip(), captions, answer, TYPE_NAMES[template], phrasing, split), ""


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
    skip_bad: bool = False,
    encoder: Encoder | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> dict:
    """Score ``clip`` on an MCQ CSV. A missing image or malformed row is an error unless ``skip_bad`` (then it is
    counted in ``n_skipped``). Image paths resolve like every benchmark's (``images`` root, then the basename, then
    the path itself / next to the CSV); pass a shared ``encoder`` to use its text-embedding cache."""
    problems = RowProblems(csv, skip_bad)
    kept, paths = [], []
    for row in read_mcq_csv(csv, problems):
        path, why = resolve_image(row.image_path, images, Path(csv).parent)
        if path is None:
            problems.bad(row.row, why)
            continue
        kept.append(row)
        paths.append(path)
    if not kept:
        raise BenchmarkDataError(f"{csv}: no scorable rows ({len(problems.messages)} skipped)")

    enc = encoder_for(clip, encoder, batch_size, progress)
    image_embeds = enc.image_files(paths, desc="MCQ images")
    option_embeds = enc.texts([c for r in kept for c in r.captions], desc="MCQ captions").reshape(len(kept), 4, -1)
    predictions = mcq_predictions(image_embeds, option_embeds)
    return {
        **mcq_accuracy(predictions, [r.correct_answer for r in kept], [r.type for r in kept]),
        **phrasing_split_accuracy(predictions.tolist(), kept),
        **problems.summary(),
    }


def phrasing_split_accuracy(predictions: list[int], rows: list[McqRow]) -> dict:
    """``{"by_phrasing_split": {split: accuracy dict}}`` over each split's negation/hybrid rows plus all affirmation
    rows, and ``{"by_phrasing": {family: {split, accuracy, n_items}}}``; empty when no row names a split (a NegBench
    CSV)."""
    splits = sorted({r.phrasing_split for r in rows} - {""})
    if not splits:
        return {}
    by_split = {}
    for split in splits:
        chosen = [(p, r) for p, r in zip(predictions, rows) if r.type == "affirmation" or r.phrasing_split == split]
        by_split[split] = mcq_accuracy(
            [p for p, _ in chosen], [r.correct_answer for _, r in chosen], [r.type for _, r in chosen]
        )
    by_family = {}
    for family in sorted({r.phrasing for r in rows} - {""}):
        chosen = [(p, r) for p, r in zip(predictions, rows) if r.phrasing == family]
        by_family[family] = {
            "split": chosen[0][1].phrasing_split,
            "accuracy": round(sum(p == r.correct_answer for p, r in chosen) / len(chosen), 4),
            "n_items": len(chosen),
        }
    return {"by_phrasing_split": by_split, "by_phrasing": by_family}


class McqBenchmark(Benchmark):
    name = "mcq"
    description = "NegBench multiple-choice negation (CSV): overall + affirmation/negation/hybrid accuracy"

    def run(self, clip, *, csv, images=None, skip_bad=False, encoder=None, batch_size=64, progress=True) -> dict:
        return run_mcq(clip, csv, images, skip_bad=skip_bad, encoder=encoder, batch_size=batch_size, progress=progress)


@hookimpl
def register_benchmarks(register):
    register(McqBenchmark())
