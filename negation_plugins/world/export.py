"""Write a world the way real data sets look on disk: COCO captions + instances JSON, an image folder, NegBench CSV.

Layout of ``make_world(out)``::

    out/images/000001.png ...            rendered scenes (train and val)
    out/captions_{train,val}.json        COCO captions (affirmative only, 5 phrasings per image)
    out/instances_{train,val}.json       COCO instances (bbox, category_id, categories; colour as an attribute)
    out/mcq_{train,val}.csv              NegBench MCQ CSV (image_path relative to out/images) + phrasing columns
    out/world.json                       the settings and file names

Train and val scenes are disjoint (different content), so val numbers measure generalisation. ``WorldConfig.kind``
picks the world (:mod:`negation_plugins.world.kinds`): every world writes this same layout.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..atomic import atomic_write_bytes, atomic_write_json
from ..benchmarks.mcq import MCQ_COLUMNS, PHRASING_COLUMNS
from .kinds import DEFAULT_WORLD, world_kind
from .scenes import Scene, bbox, generate_scenes


@dataclass(frozen=True)
class WorldFiles:
    """Paths of an exported world (what the ``world_coco`` test fixture hands out)."""

    root: Path
    images: Path
    captions: Path
    instances: Path
    mcq_csv: Path
    val_captions: Path
    val_instances: Path
    mcq_train_csv: Path
    kind: str = DEFAULT_WORLD  # which world (negation_plugins.world.kinds)

    @classmethod
    def at(cls, root: str | os.PathLike) -> WorldFiles:
        root = Path(root)
        if not (root / "world.json").is_file():
            raise FileNotFoundError(f"{root}: not a world folder (no world.json); create one with `negclip world make`")
        kind = json.loads((root / "world.json").read_text())["config"].get("kind", DEFAULT_WORLD)
        return cls(
            root=root,
            images=root / "images",
            captions=root / "captions_train.json",
            instances=root / "instances_train.json",
            mcq_csv=root / "mcq_val.csv",
            val_captions=root / "captions_val.json",
            val_instances=root / "instances_val.json",
            mcq_train_csv=root / "mcq_train.csv",
            kind=kind,
        )


@dataclass(frozen=True)
class WorldConfig:
    n_images: int = 2000
    seed: int = 0
    image_size: int = 32
    val_fraction: float = 0.1
    kind: str = DEFAULT_WORLD


def make_world(out: str | os.PathLike, config: WorldConfig = WorldConfig(), progress: bool = True) -> WorldFiles:
    """Render and export a world; the same config always writes the same bytes."""
    if config.n_images < 2:
        raise ValueError(f"a world needs at least 2 images (one train, one val); got n_images={config.n_images}")
    if not 0 < config.val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1); got {config.val_fraction}")
    kind = world_kind(config.kind)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    scenes = generate_scenes(config.n_images, config.seed, layout=kind.layout)
    n_val = max(1, round(config.n_images * config.val_fraction))
    splits = {"train": scenes[:-n_val], "val": scenes[-n_val:]}
    text_rng = random.Random(f"{config.seed}-text")

    for scene in tqdm(scenes, desc="rendering scenes", disable=not progress):
        path = out / "images" / _file_name(scene)
        buffer = io.BytesIO()
        kind.render(scene, config.image_size).save(buffer, format="PNG")
        atomic_write_bytes(path, buffer.getvalue())

    for split, split_scenes in splits.items():
        captions = {s.id: kind.affirmative_captions(s, text_rng) for s in split_scenes}
        atomic_write_json(out / f"captions_{split}.json", _coco_captions(split_scenes, captions, config.image_size))
        atomic_write_json(out / f"instances_{split}.json", _coco_instances(split_scenes, config.image_size, kind))
        atomic_write_bytes(out / f"mcq_{split}.csv", _mcq_csv(split_scenes, text_rng, kind.mcq_items).encode())

    manifest = {
        "config": asdict(config),
        "categories": list(kind.layout.categories),
        "n_train": len(splits["train"]),
        "n_val": len(splits["val"]),
        "files": {
            "images": "images",
            "captions_train": "captions_train.json",
            "instances_train": "instances_train.json",
            "captions_val": "captions_val.json",
            "instances_val": "instances_val.json",
            "mcq_train": "mcq_train.csv",
            "mcq_val": "mcq_val.csv",
        },
    }
    atomic_write_json(out / "world.json", manifest)
    return WorldFiles.at(out)


def _file_name(scene: Scene) -> str:
    return f"{scene.id:06d}.png"


def _image_entry(scene: Scene, image_size: int) -> dict:
    return {"id": scene.id, "file_name": _file_name(scene), "width": image_size, "height": image_size}


def _coco_captions(scenes: list[Scene], captions: dict[int, list[str]], image_size: int) -> dict:
    annotations = [
        {"id": i + 1, "image_id": scene.id, "caption": caption}
        for i, (scene, caption) in enumerate((s, c) for s in scenes for c in captions[s.id])
    ]
    return {
        "info": {"description": "negation-plugins synthetic world: affirmative captions"},
        "images": [_image_entry(s, image_size) for s in scenes],
        "annotations": annotations,
    }


def _coco_instances(scenes: list[Scene], image_size: int, kind) -> dict:
    category_id = {name: i + 1 for i, name in enumerate(kind.layout.categories)}
    annotations = []
    for scene in scenes:
        for obj in scene.objects:
            box = bbox(obj, image_size)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": scene.id,
                    "category_id": category_id[obj.category],
                    "bbox": box,
                    "area": round(box[2] * box[3], 2),
                    "iscrowd": 0,
                    "attributes": {"colour": obj.colour},
                }
            )
    return {
        "info": {"description": "negation-plugins synthetic world: objects per image"},
        "images": [_image_entry(s, image_size) for s in scenes],
        "annotations": annotations,
        "categories": [{"id": i, "name": name, "supercategory": kind.supercategory} for name, i in category_id.items()],
    }


def _mcq_csv(scenes: list[Scene], rng: random.Random, mcq_items) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow((*MCQ_COLUMNS, *PHRASING_COLUMNS))  # NegBench's columns first, so NegBench readers work
    for scene in scenes:
        for item in mcq_items(scene, rng):
            writer.writerow(
                [
                    _file_name(scene),
                    item.correct_answer,
                    *item.captions,
                    item.template,
                    item.phrasing,
                    item.phrasing_split,
                ]
            )
    return buffer.getvalue()
