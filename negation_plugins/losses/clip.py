"""Plain symmetric InfoNCE objectives: ``clip`` on original captions, ``infonce`` on absence-negated ones."""

from __future__ import annotations

from .base import Objective, clip_symmetric


class ClipObjective(Objective):
    """CLIP's own loss on the original captions: mix it in to retain affirmative retrieval."""

    name = "clip"
    description = "symmetric CLIP InfoNCE between images and their original captions (retention)"
    requires = ("image", "caption", "logit_scale")

    def loss(self, batch):
        return clip_symmetric(batch["image"], batch["caption"], batch["logit_scale"])


class InfoNCEObjective(Objective):
    """NegationCLIP: CLIP's loss, but the positives are the absence-negated (still true) captions."""

    name = "infonce"
    description = "NegationCLIP: symmetric CLIP InfoNCE between images and absence-negated captions"
    requires = ("image", "absence", "logit_scale")

    def loss(self, batch):
        return clip_symmetric(batch["image"], batch["absence"], batch["logit_scale"])
