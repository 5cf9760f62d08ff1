"""TNG-CLIP: each image owns a text triplet [hybrid, full, caption]; 3N texts are scored against N images.

text->image: each of the 3N texts must pick its own image among the N (cross-entropy).
image->text: each image must put its probability mass on its OWN three texts among all 3N. We use the
multi-positive form -log(sum of softmax over the image's own three texts), so the three true texts of one
image do not compete with each other. (The public TNG-CLIP code draws random targets here, a bug.)
The loss is the mean of the two directions.

"hybrid" and "full" are made on the fly from each batch's captions, objects and image features (hard objects mined
by image similarity; :mod:`negation_plugins.data.onthefly`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Objective
from .batch import TEXT, BatchKey, Draw


def negate_on_the_fly(draw: Draw) -> dict[str, list[str]]:
    """TNG-CLIP's hybrid and full negations of a draw, made once for both keys."""
    from negation_plugins.data.onthefly import OnTheFlyNegation

    def negate():
        objects = [e.present_objects for e in draw.examples]
        return OnTheFlyNegation(seed=draw.seed, context_length=draw.context_length)(
            [e.caption for e in draw.examples],
            image_embeds=draw.image_features,
            objects=objects if any(objects) else None,
        )

    return draw.once("tng", negate)


def _made_on_the_fly(name: str, help: str) -> BatchKey:
    return BatchKey(name, TEXT, lambda draw: negate_on_the_fly(draw)[name], help, after_images=True)


HYBRID = _made_on_the_fly("hybrid", "caption + the absence of a hard object")
FULL = _made_on_the_fly("full", "the negation of another image's caption")


class TNGObjective(Objective):
    name = "tng"
    description = "TNG-CLIP: triplet [hybrid, full, caption] vs images, text->image CE + multi-positive image->text"
    requires = ("image", "hybrid", "full", "caption", "logit_scale")
    batch_keys = (HYBRID, FULL)

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
