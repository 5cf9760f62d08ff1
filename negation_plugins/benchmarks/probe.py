"""Negation-sensitivity probe, no dataset needed: the cosine between a caption's and its negation's text
embeddings. A bag-of-words encoder gives ~1.0 ("a dog" vs "no dog" look alike); a model that understands
"no" pulls them apart. Reported as a distribution. Pairs come from a negator plugin (default: the rule-based
``template`` negator) applied to built-in captions, or from a file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..textfiles import read_text
from . import Benchmark
from .common import BenchmarkDataError, RowProblems, encoder_for

OBJECTS = (
    "dog",
    "cat",
    "car",
    "person",
    "bicycle",
    "tree",
    "chair",
    "cup",
    "umbrella",
    "horse",
    "boat",
    "clock",
    "bench",
    "laptop",
    "pizza",
    "bird",
    "book",
    "traffic light",
    "kite",
    "train",
)
SCENES = (
    "a {} and a {} on the grass.",
    "a photo of a {} next to a {}.",
    "a street with a {} and a {}.",
    "a room with a {} beside a {}.",
    "a {} in front of a {} on a sunny day.",
)
HISTOGRAM_EDGES = [round(-1 + 0.1 * i, 1) for i in range(21)]


def negator_pairs(negator: str = "template", n_captions: int = 50, seed: int = 0):
    """``(pairs, kinds, n_unnegatable)`` made by a registered negator from built-in two-object captions: each
    caption negated once for an object it shows ("presence": meaning flips) and once for one it does not
    ("absence": an added "no X"); plus "held-out" pairs: the absence phrased in a held-out family of
    :mod:`negation_plugins.phrasings` (never in training data), so ``mean_held-out`` vs ``mean_absence`` shows
    whether a fine-tuned model's negation reaches phrasings it was not trained on."""
    import random

    from .. import plugins
    from ..data.io import CaptionItem
    from ..data.language import lower_first, upper_first
    from ..phrasings import fields, templates

    rng = random.Random(seed)
    items, present, absent = [], [], []
    for index in range(n_captions):
        first, second, missing = rng.sample(OBJECTS, 3)
        caption = SCENES[index % len(SCENES)].format(first, second)
        caption = re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", caption)  # "a umbrella" -> "an umbrella"
        items.append(CaptionItem(image=f"probe-{index}", caption=caption, objects=(first, second)))
        present.append(second)
        absent.append(missing)
    rewriter = plugins.get_one("negators", negator)()
    pairs, kinds, unnegatable = [], [], 0
    for kind, objects in (("absence", absent), ("presence", present)):
        for item, negated in zip(items, rewriter.rewrite(items, objects, kind, rng)):
            if negated is None:
                unnegatable += 1
                continue
            pairs.append((item.caption, negated))
            kinds.append(kind)
    held_out = templates("hybrid", "held-out")
    for item, obj in zip(items, absent):
        second = rng.choice([o for o in OBJECTS if o != obj and o not in item.objects])
        template, body = rng.choice(held_out), item.caption.rstrip(".")
        body = body if template.startswith("{c}") else lower_first(body)
        pairs.append((item.caption, upper_first(template.format(c=body, **fields(obj, second))) + "."))
        kinds.append("held-out")
    return pairs, kinds, unnegatable


def read_pairs(path, skip_bad=False) -> tuple[list[tuple[str, str]], RowProblems]:
    """Pairs from negation-record JSONL (``caption``/``negated_caption``) or a TSV of ``caption<TAB>negation``."""
    path = Path(path)
    problems = RowProblems(path, skip_bad)
    pairs = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix in (".jsonl", ".json"):
            try:
                record = json.loads(line)
                pair = (record["caption"], record["negated_caption"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                problems.bad(
                    number, f"needs a JSON object with 'caption' and 'negated_caption' ({err.__class__.__name__})"
                )
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

    def run(
        self,
        clip,
        *,
        pairs=None,
        negator="template",
        n_captions=50,
        seed=0,
        skip_bad=False,
        encoder=None,
        batch_size=64,
        progress=True,
    ):
        """``pairs``: a JSONL/TSV file of caption/negation pairs; without it, ``negator`` makes them."""
        extra = {}
        if pairs is None:
            pairs, kinds, unnegatable = negator_pairs(negator, int(n_captions), int(seed))
            problems = RowProblems(f"negator {negator!r}")
            extra = {"negator": negator, "n_unnegatable": unnegatable}
        else:
            pairs, problems = read_pairs(pairs, skip_bad)
            kinds = ["file"] * len(pairs)
        if not pairs:
            raise BenchmarkDataError("negation-probe: no caption/negation pairs")
        enc = encoder_for(clip, encoder, batch_size, progress)
        affirmative = enc.texts([a for a, _ in pairs], desc="probe captions")
        negated = enc.texts([n for _, n in pairs], desc="probe negations")
        cosines = (affirmative * negated).sum(1)
        by_kind = {
            f"mean_{kind}": float(cosines[[k == kind for k in kinds]].mean())
            for kind in sorted(set(kinds))
            if kind != "file"
        }
        return {"cosine": distribution(cosines), **by_kind, "n_pairs": len(pairs), **extra, **problems.summary()}
