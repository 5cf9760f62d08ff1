"""Shared pieces of the trainer tests (no tests here): negation records (the tiny model is in negation_plugins.testing).

The records are written from the world's COCO instances with a few templates, so these tests do not depend on
the data generator; tests/test_trainer_e2e.py uses the real generator.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ABSENCE = ("{caption} but no {obj}.", "{caption}, without a {obj}.", "{caption}; there is no {obj}.")


def write_records(world, path: Path, seed: int = 0, limit: int | None = None) -> int:
    """Absence records (an object NOT in the image) and presence records (one that IS, removed from the
    affirmative part) in the trainer's JSONL format."""
    captions = json.loads(Path(world.captions).read_text())
    instances = json.loads(Path(world.instances).read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    files = {i["id"]: i["file_name"] for i in captions["images"]}
    present: dict[int, list[str]] = {}
    for ann in instances["annotations"]:
        present.setdefault(ann["image_id"], []).append(names[ann["category_id"]])
    rng = random.Random(seed)
    vocabulary = sorted(set(names.values()))
    rows = []
    for ann in captions["annotations"][:limit]:
        here = sorted(set(present.get(ann["image_id"], [])))
        caption = ann["caption"].rstrip(".")
        base = {
            "image": files[ann["image_id"]],
            "image_id": ann["image_id"],
            "caption": ann["caption"],
            "negator": "test-templates",
            "verifier": None,
        }
        absent = [n for n in vocabulary if n not in here]
        if absent:
            obj = rng.choice(absent)
            rows.append(
                {
                    **base,
                    "negated_caption": rng.choice(ABSENCE).format(caption=caption, obj=obj),
                    "objects": [obj],
                    "kind": "absence",
                }
            )
        if len(here) > 1:
            obj = rng.choice(here)
            rest = " and ".join(f"a {n}" for n in here if n != obj)
            rows.append({**base, "negated_caption": f"{rest} but no {obj}.", "objects": [obj], "kind": "presence"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)
