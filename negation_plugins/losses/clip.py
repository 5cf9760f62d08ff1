"""Plain symmetric InfoNCE objectives: ``clip`` on original captions, ``infonce`` on absence-negated ones."""

from __future__ import annotations

from .base import Objective, clip_symmetric


class _ImageTextInfoNCE(Objective):
    """Symmetric CLIP InfoNCE between the images and the captions under batch key ``positives`` (the one piece
    the two objectives differ in)."""

    positives = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.requires = ("image", cls.positives, "logit_scale")

    def loss(self, batch):
        return clip_symmetric(batch["image"], batch[self.positives], batch["logit_scale"])


class ClipObjective(_ImageTextInfoNCE):
    """CLIP's own loss on the original captions: mix it in to retain affirmative retrieval."""

    name = "clip"
    description = "symmetric CLIP InfoNCE between images and their original captions (retention)"
    positives = "caption"


class InfoNCEObjective(_ImageTextInfoNCE):
    """NegationCLIP: CLIP's loss, but the positives are the absence-negated (still true) captions."""

    name = "infonce"
    description = "NegationCLIP: symmetric CLIP InfoNCE between images and absence-negated captions"
    positives = "absence"
