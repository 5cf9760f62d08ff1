"""The optimizer and learning-rate schedule every trainer here uses: AdamW over a decay/no-decay split, linear warmup
then cosine decay (transformers' schedule). World pretraining and fine-tuning differ only in their numbers."""

from __future__ import annotations

import torch
from torch import nn


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only: biases, norms, embeddings and the logit scale are not
    pulled towards zero. Frozen parameters are left out."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 and "embedding" not in name else no_decay).append(param)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_rate: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 over ``warmup_steps``, then cosine decay to ``min_lr_rate`` x the peak at
    ``total_steps``; call ``step()`` once per optimizer step."""
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup  # 0.7 s: only when training

    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps, min_lr_rate=min_lr_rate
    )
