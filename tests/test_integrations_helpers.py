"""Shared pieces of the integration tests (the tiny models themselves are in ``negation_plugins.testing``)."""

from __future__ import annotations

import torch

from negation_plugins import ClipBundle

PROMPTS = ["a street without cars", "a dog, not a cat"]


def open_clip_tokens(bundle: ClipBundle, prompts) -> torch.Tensor:
    return bundle.tokenizer(list(prompts))


def open_clip_token_states(bundle: ClipBundle, prompts) -> torch.Tensor:
    """Per-token final states (after ln_final) of an open_clip text tower: what SD 1.x reads."""
    model = bundle.model
    with torch.no_grad():
        x = model.token_embedding(open_clip_tokens(bundle, prompts)) + model.positional_embedding
        x = model.transformer(x, attn_mask=model.attn_mask)
        return model.ln_final(x)
