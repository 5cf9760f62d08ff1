"""Retention checks: fine-tuning for negation must not cost general ability.

* ``zeroshot-classification``: any image-folder dataset (one folder per class, class = folder name), prompts
  from configurable templates, top-1/top-5 accuracy.
* ``coco-retrieval``: COCO-style captions JSON + image folder, image<->text Recall@1/5/10 (also the synthetic
  world's affirmative retrieval figure, on its ``captions_val.json`` + ``images/``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.io import check_image
from . import Benchmark
from .common import (
    IMAGE_SUFFIXES,
    BenchmarkDataError,
    RowProblems,
    encoder_for,
    pessimistic_rank,
    read_coco_pairs,
    retrieval_of_groups,
)

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a good photo of a {}.",
    "a close-up photo of a {}.",
    "a drawing of a {}.",
)


def parse_templates(templates) -> list[str]:
    """A list of templates, a ``|``-separated string, or a text file with one template per line; each has ``{}``."""
    if isinstance(templates, str):
        path = Path(templates)
        if "{}" not in templates and path.is_file():
            templates = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            templates = [t.strip() for t in templates.split("|") if t.strip()]
    templates = list(templates)
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise ValueError(f"prompt templates must each contain '{{}}' (the class name); got {bad or templates}")
    return templates


def image_folder(root, skip_bad=False) -> tuple[list[str], list[tuple[Path, int]], RowProblems]:
    """Classes (sorted folder names) and ``(image, class index)`` for every image file below each class folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image-folder dataset not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise BenchmarkDataError(f"{root}: needs at least two class folders, found {classes}")
    problems = RowProblems(root, skip_bad)
    samples = []
    for label, name in enumerate(classes):
        for file in sorted((root / name).rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                why = check_image(file)
                if why:
                    problems.bad(file.relative_to(root), f"unreadable image {file}: {why}")
                else:
                    samples.append((file, label))
    if not samples:
        raise BenchmarkDataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders")
    return classes, samples, problems


class ZeroShotClassification(Benchmark):
    name = "zeroshot-classification"
    description = "Zero-shot classification on an image-folder dataset (class = folder name): top-1/top-5 accuracy"

    def run(
        self, clip, *, root, templates=DEFAULT_TEMPLATES, skip_bad=False, encoder=None, batch_size=64, progress=True
    ):
        templates = parse_templates(templates)
        classes, samples, problems = image_folder(root, skip_bad)
        enc = encoder_for(clip, encoder, batch_size, progress)
        names = [c.replace("_", " ") for c in classes]
        prompts = enc.texts([t.format(n) for n in names for t in templates], desc="class prompts")
        weights = torch.nn.functional.normalize(prompts.view(len(classes), len(templates), -1).mean(1), dim=-1)
        image_embs = enc.image_files([f for f, _ in samples], desc="classification images")
        labels = torch.tensor([label for _, label in samples])
        positive = labels[:, None] == torch.arange(len(classes))[None, :]
        ranks = pessimistic_rank(image_embs @ weights.T, positive)
        return {
            "top1": float((ranks < 1).float().mean()),
            "top5": float((ranks < 5).float().mean()),
            "n_images": len(samples),
            "n_classes": len(classes),
            "n_templates": len(templates),
            **problems.summary(),
        }


class CocoRetrieval(Benchmark):
    name = "coco-retrieval"
    description = "COCO-style image<->text retrieval (captions JSON + images): Recall@1/5/10 both ways"

    def run(
        self,
        clip,
        *,
        captions,
        images=None,
        limit=None,
        captions_per_image=None,
        ks=(1, 5, 10),
        skip_bad=False,
        encoder=None,
        batch_size=64,
        progress=True,
    ):
        pairs, problems = read_coco_pairs(captions, images, skip_bad, limit)
        if not pairs:
            raise BenchmarkDataError(f"{captions}: no images with captions to retrieve")
        if captions_per_image is not None:  # the 5k-test protocol keeps each image's first 5
            pairs = [(file, caps[: int(captions_per_image)]) for file, caps in pairs]
        enc = encoder_for(clip, encoder, batch_size, progress)
        return {**retrieval_of_groups(enc, pairs, ks, what="COCO"), **problems.summary()}
