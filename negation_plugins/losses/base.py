"""The objective contract: a loss module that reads named, L2-normalized embeddings from a batch dict.

Built-in batch keys (shape (N, D) unless noted): "image", "caption" (original, true), "absence" (absence-negated,
true), "presence" (presence-negated, false), "hybrid", "full" (TNG on-the-fly, true), "mcq" (N, K, D) with
"mcq_answer" (N,) long, "distractor_image", and "logit_scale" (scalar, already exp()'d). An objective that needs
another key declares it in ``batch_keys`` (see :mod:`negation_plugins.losses.batch`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .batch import BatchKey


class Objective(nn.Module):
    """Base class: subclasses set ``name``, ``description``, ``requires`` and implement ``loss(batch)``; a key no
    built-in objective makes is declared in ``batch_keys`` (its builder runs where the trainer makes batches)."""

    name: str = ""
    description: str = ""
    requires: tuple[str, ...] = ()
    batch_keys: tuple[BatchKey, ...] = ()

    def forward(self, batch: dict) -> torch.Tensor:
        self.check_batch(batch)
        return self.loss(batch)

    def loss(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError(f"objective {self.name!r} must implement loss(batch)")

    def check_batch(self, batch: dict) -> None:
        """Fail with the missing key names instead of a KeyError deep inside the loss."""
        missing = [key for key in self.requires if key not in batch]
        if missing:
            raise KeyError(
                f"objective {self.name!r} needs batch keys {list(self.requires)}; missing {missing} "
                f"(batch has {sorted(batch)})"
            )


def diagonal_targets(logits: torch.Tensor) -> torch.Tensor:
    """Row i's correct column is i."""
    return torch.arange(logits.shape[0], device=logits.device)


def clip_symmetric(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's InfoNCE: mean of image->text and text->image cross-entropy with matching pairs on the diagonal."""
    logits_per_image = logit_scale * image @ text.T
    targets = diagonal_targets(logits_per_image)
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.T, targets)) / 2
