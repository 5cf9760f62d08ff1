"""Retention checks: fine-tuning for negation must not cost general ability.

* ``zeroshot-classification``: any image-folder dataset (one folder per class), top-1/top-5 accuracy. Class
  names: a ``classnames`` file when given; ImageNet WordNet-id folders (``n01440764``, ...) get open_clip's ImageNet
  class names and, by default, OpenAI's 80 ImageNet templates; otherwise the folder name.
* ``coco-retrieval``: COCO-style captions JSON + image folder, image<->text Recall@1/5/10 (also the synthetic
  world's affirmative retrieval figure, on its ``captions_val.json`` + ``images/``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..data.io import check_image
from ..textfiles import read_text
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


WNID = re.compile(r"n\d{8}")


def openai_imagenet_templates() -> list[str]:
    """OpenAI's 80 ImageNet prompt templates, as shipped by open_clip."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]


def parse_templates(templates) -> list[str]:
    """A list of templates, ``openai-imagenet``, a ``|``-separated string, or a text file with one template per
    line; each has ``{}``."""
    if templates == "openai-imagenet":
        return openai_imagenet_templates()
    if isinstance(templates, str):
        path = Path(templates)
        if "{}" not in templates and path.is_file():
            templates = [line.strip() for line in read_text(path).splitlines() if line.strip()]
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


def imagenet_class_names(folders: list[str]) -> list[str]:
    """open_clip's ImageNet-1k class names for WordNet-id folders (timm's list of the 1,000 ids, in the standard
    sorted order both follow), so a partial set of class folders maps too."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    from timm.data import ImageNetInfo

    index = {wnid: i for i, wnid in enumerate(ImageNetInfo("imagenet-1k").label_names())}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise BenchmarkDataError(
            f"class folders {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} are WordNet ids outside "
            "ImageNet-1k: pass their names with classnames=FILE (lines 'folder<TAB>name')"
        )
    return [IMAGENET_CLASSNAMES[index[f]] for f in folders]


def read_class_names(path, folders: list[str]) -> list[str]:
    """Names for ``folders`` from a file: ``folder<TAB>name`` lines (extra folders allowed), or one name per line
    in sorted-folder order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-names file not found: {path}")
    lines = [(n, line) for n, line in enumerate(read_text(path).splitlines(), 1) if line.strip()]
    tabbed = [n for n, line in lines if "\t" in line]
    if not tabbed:
        if len(lines) != len(folders):
            raise BenchmarkDataError(
                f"{path}: {len(lines)} class names for {len(folders)} class folders (one name per line, in sorted "
                "folder order, or 'folder<TAB>name' lines)"
            )
        return [line.strip() for _, line in lines]
    if len(tabbed) != len(lines):
        plain = next(n for n, line in lines if "\t" not in line)
        raise BenchmarkDataError(f"{path}: line {plain}: expected 'folder<TAB>name' like the other lines")
    table = {}
    for n, line in lines:
        folder, name = (part.strip() for part in line.split("\t", 1))
        if not folder or not name:
            raise BenchmarkDataError(f"{path}: line {n}: expected 'folder<TAB>name', got {line!r}")
        table[folder] = name
    missing = [f for f in folders if f not in table]
    if missing:
        raise BenchmarkDataError(f"{path}: no name for class folder(s) {', '.join(missing[:5])}")
    return [table[f] for f in folders]


def class_names(folders: list[str], classnames=None) -> tuple[list[str], str]:
    """``(names, where they came from)`` for the class folders: the file, ImageNet ids, or the folder names."""
    if classnames is not None:
        return read_class_names(classnames, folders), str(classnames)
    if all(WNID.fullmatch(f) for f in folders):
        return imagenet_class_names(folders), "imagenet-1k"
    if any(WNID.fullmatch(f) for f in folders):
        raise BenchmarkDataError(
            "some class folders are WordNet ids and some are not: pass the class names with classnames=FILE"
        )
    return [f.replace("_", " ") for f in folders], "folders"


class ZeroShotClassification(Benchmark):
    name = "zeroshot-classification"
    description = "Zero-shot classification on an image-folder dataset (ImageNet ids named): top-1/top-5 accuracy"

    def run(
        self,
        clip,
        *,
        root,
        templates=None,
        classnames=None,
        skip_bad=False,
        encoder=None,
        batch_size=64,
        progress=True,
    ):
        """``templates`` default: OpenAI's ImageNet set for ImageNet ids, :data:`DEFAULT_TEMPLATES` otherwise."""
        classes, samples, problems = image_folder(root, skip_bad)
        names, names_from = class_names(classes, classnames)
        if templates is None:
            templates = "openai-imagenet" if names_from == "imagenet-1k" else DEFAULT_TEMPLATES
        templates = parse_templates(templates)
        enc = encoder_for(clip, encoder, batch_size, progress)
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
            "class_names": names_from,
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
