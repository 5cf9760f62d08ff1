"""Omni-NegCLIP: a presence loss (negating an object that IS there makes the caption false) plus an absence
loss (negating an object that is NOT there keeps it true), from arXiv 2603.29258.

L_pres = mean(L1, L2, L3) with C = "caption", N = "presence":
  L1 = CE(s·I_i·[C;N]ᵀ -> i), L2 = CE(s·C_i·Iᵀ -> i), L3 = CE([s⟨I_i,C_i⟩, s⟨I_i,N_i⟩] -> 0).
L_abs = CLIP_sym(I, U) + λ·CLIP_sym(I, O) + λ_t·mean(max(0, cos(O_i, U_i) + m)) with O = "caption",
U = "absence", m = 0.9.
Total = presence_weight·L_pres + absence_weight·L_abs (all weights 1 in the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Objective, clip_symmetric, diagonal_targets


def presence_loss(image, caption, presence, logit_scale):
    logits_image = logit_scale * image @ torch.cat([caption, presence]).T  # (N, 2N)
    l1 = F.cross_entropy(logits_image, diagonal_targets(logits_image))
    logits_caption = logit_scale * caption @ image.T
    l2 = F.cross_entropy(logits_caption, diagonal_targets(logits_caption))
    pair = logit_scale * torch.stack([(image * caption).sum(-1), (image * presence).sum(-1)], dim=1)  # (N, 2)
    l3 = F.cross_entropy(pair, torch.zeros(pair.shape[0], dtype=torch.long, device=pair.device))
    return (l1 + l2 + l3) / 3


def absence_loss(
    image,
    caption,
    absence,
    logit_scale,
    caption_weight=1.0,
    margin_weight=1.0,
    margin=0.9,
):
    margin_term = (F.cosine_similarity(caption, absence, dim=-1) + margin).clamp(min=0).mean()
    return (
        clip_symmetric(image, absence, logit_scale)
        + caption_weight * clip_symmetric(image, caption, logit_scale)
        + margin_weight * margin_term
    )


class OmniObjective(Objective):
    name = "omni"
    description = "Omni-NegCLIP: presence loss (caption vs presence-negated) + absence loss with cosine margin"
    requires = ("image", "caption", "presence", "absence", "logit_scale")

    def __init__(
        self,
        presence_weight=1.0,
        absence_weight=1.0,
        caption_weight=1.0,
        margin_weight=1.0,
        margin=0.9,
    ):
        super().__init__()
        self.presence_weight = presence_weight
        self.absence_weight = absence_weight
        self.caption_weight = caption_weight
        self.margin_weight = margin_weight
        self.margin = margin

    def loss(self, batch):
        image, caption, scale = batch["image"], batch["caption"], batch["logit_scale"]
        pres = presence_loss(image, caption, batch["presence"], scale)
        absn = absence_loss(
            image,
            caption,
            batch["absence"],
            scale,
            self.caption_weight,
            self.margin_weight,
            self.margin,
        )
        return self.presence_weight * pres + self.absence_weight * absn
