"""Absence verifiers: decide whether an object is really absent from an image before we write "no X" as true.

Contract: a ``Verifier`` class (registered by class, built with its options) whose
``absent(items, objects) -> list[bool]`` says, per item, whether ``objects[i]`` is absent from ``items[i]``'s
image (True = keep the absence caption). ``stats`` counts ``checked``/``rejected``.

Built-in: ``annotations`` (COCO instances ground truth), ``vqa`` (a transformers VQA / image-text-to-text model
asked "Is there a X in this image? Answer yes or no.", as NegationCLIP does with LLaVA), ``detector`` (an OWL-ViT
family zero-shot detector with a score threshold, as NegBench does) and ``clip`` (a CLIP zero-shot presence
probability over the object vocabulary).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ..hookspecs import hookimpl
from .io import CaptionItem, DataError
from .language import with_article


class Verifier:
    """Base class of verifier plugins."""

    name: str = ""
    description: str = ""
    needs_images: bool = False

    def __init__(self, images: str | os.PathLike | None = None, **options):
        if options:
            raise TypeError(f"verifier {self.name!r} got unknown option(s): {', '.join(sorted(options))}")
        self.images = None if images is None else Path(images)
        if self.needs_images and self.images is None:
            raise ValueError(f"verifier {self.name!r} looks at the images: give the image folder (--images)")
        self.stats: Counter = Counter()

    def absent(self, items: Sequence[CaptionItem], objects: Sequence[str]) -> list[bool]:
        verdicts = self._absent(items, objects)
        self.stats["checked"] += len(verdicts)
        self.stats["rejected"] += sum(not v for v in verdicts)
        return verdicts

    def _absent(self, items: Sequence[CaptionItem], objects: Sequence[str]) -> list[bool]:
        raise NotImplementedError

    def set_vocabulary(self, vocabulary: Sequence[str]) -> None:
        """The object names of the data set (verifiers that score against alternatives use them)."""

    def open_images(self, items: Sequence[CaptionItem]):
        from PIL import Image

        images = []
        for item in items:
            path = self.images / item.image
            try:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            except (OSError, ValueError) as e:
                raise DataError(f"{path}: cannot read image for verifier {self.name!r}: {e}") from None
        return images


class AnnotationVerifier(Verifier):
    name = "annotations"
    description = "Ground truth: absent when the COCO instances JSON has no such object in the image"

    def _absent(self, items, objects):
        verdicts = []
        for item, obj in zip(items, objects):
            if item.objects is None:
                raise DataError(
                    f"verifier 'annotations' needs object annotations (--instances) but image {item.image!r} has none"
                )
            verdicts.append(obj.lower() not in item.objects)
        return verdicts


@hookimpl
def register_verifiers(register):
    register(AnnotationVerifier)
