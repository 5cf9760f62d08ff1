"""TNG-CLIP: each image owns a text triplet [hybrid, full, caption]; 3N texts are scored against N images.

text->image: each of the 3N texts must pick its own image among the N (cross-entropy).
image->text: each image must put its probability mass on its OWN three texts among all 3N. We use the
multi-positive form -log(sum of softmax over the image's own three texts), so the three true texts of one
image do not compete with each other. (The public TNG-CLIP code draws random targets here, a bug.)
The loss is the mean of the two directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Objective


class TNGObjective(Objective):
    name = "tng"
    description = "TNG-CLIP: triplet [hybrid, full, caption] vs images, text->image CE + multi-positive image->text"
    requires = ("image", "hybrid", "full", "caption", "logit_scale")

    def loss(self, batch):
        image = batch["image"]
        n = image.shape[0]
        texts = torch.cat([batch["hybrid"], batch["full"], batch["caption"]])  # (3N, D); text k belongs to image k % N
        owner = torch.arange(n, device=image.device).repeat(3)
        logits_per_text = batch["logit_scale"] * texts @ image.T  # (3N, N)
        text_to_image = F.cross_entropy(logits_per_text, owner)

        log_probs = logits_per_text.T.log_softmax(dim=-1)  # (N, 3N): each image over all texts
        own = owner.unsqueeze(0) == torch.arange(n, device=image.device).unsqueeze(1)  # (N, 3N)
        image_to_text = -torch.logsumexp(log_probs.masked_fill(~own, float("-inf")), dim=-1).mean()
        return (text_to_image + image_to_text) / 2
