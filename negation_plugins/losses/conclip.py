"""CoN-CLIP (WACV 2025): negated captions plus distractor images that match them.

With C = "caption" (true), N = "presence" (negated, false for the image) and I_d = "distractor_image"
(an image the negated caption describes):
  ℓ1 = CE(s·I·[C;N]ᵀ -> i), ℓ2 = CE(s·C·[I;I_d]ᵀ -> i), ℓ3 = CE(s·I_d·[N;C]ᵀ -> i); loss = mean of the three.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import Objective, diagonal_targets
from .batch import IMAGE, BatchKey, Draw, Example


def distractor_images(draw: Draw) -> list[str]:
    """Per example, an image where its presence-negated object is absent (so the negated caption fits it better);
    a random other image when the records name no such image."""
    absent_index = draw.pool.once("absent_objects", absent_object_index)
    out = []
    for example in draw.examples:
        candidates = [i for obj in example.present_objects for i in absent_index.get(obj, [])]
        candidates = [i for i in candidates if draw.pool[i].image != example.image]
        pick = draw.pool[draw.rng.choice(candidates)] if candidates else draw.pool[draw.rng.randrange(len(draw.pool))]
        out.append(pick.image)
    return out


def absent_object_index(pool: Sequence[Example]) -> dict[str, list[int]]:
    """Object -> the pool positions of examples whose records name it absent."""
    index: dict[str, list[int]] = {}
    for i, example in enumerate(pool):
        for obj in example.absent_objects:
            index.setdefault(obj, []).append(i)
    return index


DISTRACTOR_IMAGE = BatchKey("distractor_image", IMAGE, distractor_images, "an image the presence-negated caption fits")


def _first_block_ce(queries, keys_first, keys_second, logit_scale):
    """CE of each query over [keys_first; keys_second] with its own row of keys_first as the answer."""
    logits = logit_scale * queries @ torch.cat([keys_first, keys_second]).T
    return F.cross_entropy(logits, diagonal_targets(logits))


class ConCLIPObjective(Objective):
    name = "conclip"
    description = "CoN-CLIP: caption vs negated caption, with distractor images matching the negated caption"
    requires = ("image", "caption", "presence", "distractor_image", "logit_scale")
    batch_keys = (DISTRACTOR_IMAGE,)

    def loss(self, batch):
        image, caption, negated = batch["image"], batch["caption"], batch["presence"]
        distractor, scale = batch["distractor_image"], batch["logit_scale"]
        l1 = _first_block_ce(image, caption, negated, scale)
        l2 = _first_block_ce(caption, image, distractor, scale)
        l3 = _first_block_ce(distractor, negated, caption, scale)
        return (l1 + l2 + l3) / 3
