"""VALSE existence: pairwise accuracy of caption over foil, on items annotators validated (mturk.caption >= 2)."""

from __future__ import annotations

import json
from pathlib import Path

from . import Benchmark
from .common import BenchmarkDataError, RowProblems, encoder_for, resolve_image


class ValseExistence(Benchmark):
    name = "valse-existence"
    description = "VALSE existence (existence.json): pairwise accuracy, caption scored above foil"

    def run(self, clip, *, file, images=None, min_mturk=2, skip_bad=False, encoder=None, batch_size=64, progress=True):
        path = Path(file)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise BenchmarkDataError(f"{path}: not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise BenchmarkDataError(f"{path}: expected a dict of id -> item, got {type(data).__name__}")
        problems = RowProblems(path, skip_bad)
        items, filtered = [], 0
        for key, item in data.items():
            try:
                image_file, caption, foil = item["image_file"], item["caption"], item["foil"]
                votes = int(item["mturk"]["caption"])
            except (KeyError, TypeError, ValueError) as err:
                problems.bad(key, f"needs image_file, caption, foil and an integer mturk.caption ({err!r})")
                continue
            if votes < int(min_mturk):
                filtered += 1
                continue
            if not (isinstance(caption, str) and isinstance(foil, str)):
                problems.bad(key, "caption and foil must be strings")
                continue
            image, why = resolve_image(image_file, images, path.parent)
            if image is None:
                problems.bad(key, why)
                continue
            items.append((image, caption, foil))
        if not items:
            raise BenchmarkDataError(f"{path}: no scorable items ({filtered} below mturk.caption >= {min_mturk})")
        enc = encoder_for(clip, encoder, batch_size, progress)
        image_embs = enc.image_files([i for i, _, _ in items], desc="VALSE images")
        captions = enc.texts([c for _, c, _ in items], desc="VALSE captions")
        foils = enc.texts([f for _, _, f in items], desc="VALSE foils")
        correct = (image_embs * captions).sum(1) > (image_embs * foils).sum(1)
        return {
            "accuracy": float(correct.float().mean()),
            "n_items": len(items),
            "n_filtered_mturk": filtered,
            **problems.summary(),
        }
