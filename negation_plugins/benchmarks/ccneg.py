"""CC-Neg (CoN-CLIP): does the image match its true caption better than its negated one?

The public file is a torch pickle ``{"image_paths": [...], "annotations": [...]}``; treat it as untrusted and
load it with ``weights_only=True`` (lists of str/dicts load fine). The last 40,000 items are the evaluation split.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from . import Benchmark
from .common import BenchmarkDataError, RowProblems, encoder_for, resolve_image, true_over_false

EVAL_SIZE = 40_000


def load_ccneg(path) -> dict:
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CC-Neg file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise BenchmarkDataError(
            f"{path}: refused to load (weights_only=True: it carries code or objects): {err}"
        ) from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise BenchmarkDataError(f"{path}: not a readable torch file: {err}") from None
    if not isinstance(data, dict) or not {"image_paths", "annotations"} <= set(data):
        raise BenchmarkDataError(f"{path}: expected a dict with 'image_paths' and 'annotations'")
    if len(data["image_paths"]) != len(data["annotations"]):
        raise BenchmarkDataError(
            f"{path}: {len(data['image_paths'])} image_paths but {len(data['annotations'])} annotations"
        )
    return data


def _captions(annotation):
    """(true, negated) from one annotation, or None if it lacks them."""
    try:
        true, negated = annotation["json"]["caption"], annotation["sop_data"]["negative-prompt"]
    except (KeyError, TypeError):
        return None
    if not (isinstance(true, str) and isinstance(negated, str) and true.strip() and negated.strip()):
        return None
    return true, negated


class CCNeg(Benchmark):
    name = "ccneg"
    description = "CC-Neg (CoN-CLIP) evaluation split: accuracy of sim(image, true) > sim(image, negated)"

    def run(
        self,
        clip,
        *,
        file,
        images=None,
        eval_size=EVAL_SIZE,
        skip_bad=False,
        encoder=None,
        batch_size=64,
        progress=True,
    ):
        data = load_ccneg(file)
        total = len(data["annotations"])
        eval_size = int(eval_size)
        if not 0 < eval_size <= total:
            raise BenchmarkDataError(
                f"{file}: has {total} items, cannot take the last eval_size={eval_size}; pass ccneg.eval_size=N"
            )
        start = total - eval_size
        problems = RowProblems(file, skip_bad)
        items = []
        for index in range(start, total):
            pair = _captions(data["annotations"][index])
            if pair is None:
                problems.bad(index, "annotation lacks a non-empty json.caption or sop_data.negative-prompt")
                continue
            image, why = resolve_image(data["image_paths"][index], images, Path(file).parent)
            if image is None:
                problems.bad(index, why)
                continue
            items.append((image, *pair))
        if not items:
            raise BenchmarkDataError(f"{file}: no scorable items in the evaluation split")
        enc = encoder_for(clip, encoder, batch_size, progress)
        return {
            **true_over_false(enc, items, "CC-Neg"),
            "eval_start": start,
            **problems.summary(),
        }
