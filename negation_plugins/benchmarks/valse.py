"""VALSE existence: pairwise accuracy of caption over foil, on items annotators validated (mturk.caption >= 2)."""

from __future__ import annotations

from pathlib import Path

from . import Benchmark
from .common import BenchmarkDataError, encoder_for, read_json_items, resolve_image, true_over_false


class ValseExistence(Benchmark):
    name = "valse-existence"
    description = "VALSE existence (existence.json): pairwise accuracy, caption scored above foil"

    def run(self, clip, *, file, images=None, min_mturk=2, skip_bad=False, encoder=None, batch_size=64, progress=True):
        data, problems = read_json_items(file, dict, "a dict of id -> item", skip_bad)
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
            image, why = resolve_image(image_file, images, Path(file).parent)
            if image is None:
                problems.bad(key, why)
                continue
            items.append((image, caption, foil))
        if not items:
            raise BenchmarkDataError(f"{file}: no scorable items ({filtered} below mturk.caption >= {min_mturk})")
        enc = encoder_for(clip, encoder, batch_size, progress)
        return {
            **true_over_false(enc, items, "VALSE"),
            "n_filtered_mturk": filtered,
            **problems.summary(),
        }
