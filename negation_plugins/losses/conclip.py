"""CoN-CLIP (WACV 2025): negated captions plus distractor images that match them.

With C = "caption" (true), N = "presence" (negated, false for the image) and I_d = "distractor_image"
(an image the negated caption describes):
  ℓ1 = CE(s·I·[C;N]ᵀ -> i), ℓ2 = CE(s·C·[I;I_d]ᵀ -> i), ℓ3 = CE(s·I_d·[N;C]ᵀ -> i); loss = mean of the three.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Objective, diagonal_targets


def _first_block_ce(queries, keys_first, keys_second, logit_scale):
    """CE of each query over [keys_first; keys_second] with its own row of keys_first as the answer."""
    logits = logit_scale * queries @ torch.cat([keys_first, keys_second]).T
    return F.cross_entropy(logits, diagonal_targets(logits))


class ConCLIPObjective(Objective):
    name = "conclip"
    description = "CoN-CLIP: caption vs negated caption, with distractor images matching the negated caption"
    requires = ("image", "caption", "presence", "distractor_image", "logit_scale")

    def loss(self, batch):
        image, caption, negated = batch["image"], batch["caption"], batch["presence"]
        distractor, scale = batch["distractor_image"], batch["logit_scale"]
        l1 = _first_block_ce(image, caption, negated, scale)
        l2 = _first_block_ce(caption, image, distractor, scale)
        l3 = _first_block_ce(distractor, negated, caption, scale)
        return (l1 + l2 + l3) / 3
