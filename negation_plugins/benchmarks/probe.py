"""Negation-sensitivity probe, no dataset needed: the cosine between a caption's and its negation's text
embeddings. A bag-of-words encoder gives ~1.0 ("a dog" vs "no dog" look alike); a model that understands
"no" pulls them apart. Reported as a distribution."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import Benchmark
from .common import BenchmarkDataError, RowProblems, encoder_for

OBJECTS = (
    "dog", "cat", "car", "person", "bicycle", "tree", "chair", "cup", "umbrella", "horse",
    "boat", "clock", "bench", "laptop", "pizza", "bird", "book", "traffic light", "kite", "train",
)
TEMPLATES = (
    ("a photo of a {}.", "a photo with no {}."),
    ("there is a {} in the picture.", "there is no {} in the picture."),
    ("a street with a {}.", "a street without a {}."),
    ("a room that contains a {}.", "a room that does not contain a {}."),
    ("an image showing a {}.", "an image not showing any {}."),
)
HISTOGRAM_EDGES = [round(-1 + 0.1 * i, 1) for i in range(21)]


def builtin_pairs() -> list[tuple[str, str]]:
    return [(a.format(o), n.format(o)) for o in OBJECTS for a, n in TEMPLATES]


def read_pairs(path, skip_bad=False) -> tuple[list[tuple[str, str]], RowProblems]:
    """Pairs from negation-record JSONL (``caption``/``negated_caption``) or a TSV of ``caption<TAB>negation``."""
    path = Path(path)
    problems = RowProblems(path, skip_bad)
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix in (".jsonl", ".json"):
            try:
                record = json.loads(line)
                pair = (record["caption"], record["negated_caption"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                problems.bad(number, f"needs a JSON object with 'caption' and 'negated_caption' ({err.__class__.__name__})")
                continue
        else:
            pair = tuple(line.split("\t"))
        if len(pair) != 2 or not all(isinstance(t, str) and t.strip() for t in pair):
            problems.bad(number, "needs a caption and its negation")
            continue
        pairs.append(pair)
    return pairs, problems


def distribution(values: torch.Tensor) -> dict:
    quantiles = torch.quantile(values, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95]))
    counts = torch.histogram(values.clamp(-1, 1), bins=torch.tensor(HISTOGRAM_EDGES)).hist
    return {
        "mean": float(values.mean()),
        "std": float(values.std()) if len(values) > 1 else 0.0,
        "min": float(values.min()),
        "p05": float(quantiles[0]),
        "p25": float(quantiles[1]),
        "median": float(quantiles[2]),
        "p75": float(quantiles[3]),
        "p95": float(quantiles[4]),
        "max": float(values.max()),
        "frac_above_0.95": float((values > 0.95).float().mean()),
        "histogram": {"edges": HISTOGRAM_EDGES, "counts": [int(c) for c in counts]},
    }


class NegationProbe(Benchmark):
    name = "negation-probe"
    description = "Cosine between caption and negated-caption text embeddings, as a distribution (no dataset)"

    def run(self, clip, *, pairs=None, skip_bad=False, encoder=None, batch_size=64, progress=True):
        if pairs is None:
            pairs, problems = builtin_pairs(), RowProblems("built-in pairs")
        else:
            pairs, problems = read_pairs(pairs, skip_bad)
        if not pairs:
            raise BenchmarkDataError("negation-probe: no caption/negation pairs")
        enc = encoder_for(clip, encoder, batch_size, progress)
        affirmative = enc.texts([a for a, _ in pairs], desc="probe captions")
        negated = enc.texts([n for _, n in pairs], desc="probe negations")
        cosines = (affirmative * negated).sum(1)
        return {"cosine": distribution(cosines), "n_pairs": len(pairs), **problems.summary()}
