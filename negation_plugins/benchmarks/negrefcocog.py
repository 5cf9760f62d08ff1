"""NegRefCOCOg: crop every candidate box, pick the crop most similar to the (negated) phrase; hit if it is the
reference box. The public file lists the reference first, so candidates are shuffled (seeded) before the argmax:
otherwise a model that ties every crop would score 100%."""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch

from . import Benchmark
from .common import (
    BenchmarkDataError,
    encoder_for,
    load_rgb,
    read_json_items,
    resolve_image,
)


def _box(value):
    """``[x, y, w, h]`` as four finite floats with positive size, or None."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    try:
        box = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
        return None
    return box


def crop(image, box):
    """The pixels of ``[x, y, w, h]`` (clamped to the image), or None when nothing is left."""
    x, y, w, h = box
    left, top = max(0, math.floor(x)), max(0, math.floor(y))
    right, bottom = min(image.width, math.ceil(x + w)), min(image.height, math.ceil(y + h))
    if right <= left or bottom <= top:
        return None
    return image.crop((left, top, right, bottom))


class NegRefCOCOg(Benchmark):
    name = "negrefcocog"
    description = "NegRefCOCOg: crop-and-match accuracy with seeded shuffling of candidate boxes"

    def run(self, clip, *, file, images=None, seed=0, skip_bad=False, encoder=None, batch_size=64, progress=True):
        data, problems = read_json_items(file, list, "a list of items", skip_bad)
        rng = random.Random(int(seed))
        enc = encoder_for(clip, encoder, batch_size, progress)
        phrases, crops, owners, is_reference = [], [], [], []
        for index, item in enumerate(data):
            if not isinstance(item, dict) or not isinstance(item.get("phrase"), str) or "image" not in item:
                problems.bad(index, "needs 'image' and a string 'phrase'")
                continue
            reference = _box(item.get("ref_bbox"))
            candidates = [_box(b) for b in item.get("bbox_list") or []]
            if reference is None or not candidates or any(b is None for b in candidates):
                problems.bad(index, "ref_bbox and every bbox_list entry must be [x, y, w, h] with positive w, h")
                continue
            if reference not in candidates:
                problems.bad(index, f"ref_bbox {reference} is not one of bbox_list")
                continue
            image_path, why = resolve_image(item["image"], images, Path(file).parent)
            if image_path is None:
                problems.bad(index, why)
                continue
            image = load_rgb(image_path)
            rng.shuffle(candidates)
            pieces = [crop(image, b) for b in candidates]
            if any(p is None for p in pieces):
                problems.bad(index, f"a box lies outside the {image.width}x{image.height} image {image_path}")
                continue
            owner = len(phrases)
            phrases.append(item["phrase"])
            crops += pieces
            owners += [owner] * len(pieces)
            is_reference += [b == reference for b in candidates]
        if not phrases:
            raise BenchmarkDataError(f"{file}: no scorable items")
        text_embs = enc.texts(phrases, desc="NegRefCOCOg phrases")
        crop_embs = enc.images(crops, desc="NegRefCOCOg crops")
        owners_t, reference_t = torch.tensor(owners), torch.tensor(is_reference)
        scores = (crop_embs * text_embs[owners_t]).sum(1)
        hits = 0
        for owner in range(len(phrases)):
            mine = (owners_t == owner).nonzero().squeeze(1)
            hits += bool(reference_t[mine[scores[mine].argmax()]])  # argmax: first of ties, in shuffled order
        return {
            "accuracy": hits / len(phrases),
            "n_items": len(phrases),
            "n_crops": len(crops),
            "seed": int(seed),
            **problems.summary(),
        }
