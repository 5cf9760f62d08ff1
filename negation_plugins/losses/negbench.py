"""NegBench's MCQ objective: each image picks its correct caption among its K options.

NegBench fine-tunes with 0.99·CLIP + 0.01·MCQ; write that as ``--objective clip:0.99 --objective negbench-mcq:0.01``.
"""

from __future__ import annotations

import torch.nn.functional as F

from .base import Objective


class NegBenchMCQObjective(Objective):
    name = "negbench-mcq"
    description = "NegBench: cross-entropy of each image over its K multiple-choice captions"
    requires = ("image", "mcq", "mcq_answer", "logit_scale")

    def loss(self, batch):
        image, options = batch["image"], batch["mcq"]  # (N, D), (N, K, D)
        if options.dim() != 3 or options.shape[0] != image.shape[0]:
            raise ValueError(f"'mcq' must have shape (N, K, D) with N={image.shape[0]}; got {tuple(options.shape)}")
        logits = batch["logit_scale"] * (options @ image.unsqueeze(-1)).squeeze(-1)  # (N, K)
        return F.cross_entropy(logits, batch["mcq_answer"])
