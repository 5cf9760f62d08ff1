"""Which parameters train: the whole text tower, LoRA adapters on it, or a slice of its layers.

The vision tower is always frozen. Modes:

- ``full``: token/positional embeddings, every text layer, ln_final, text_projection and logit_scale (NegationCLIP).
- ``lora``: peft LoRA adapters on the text tower's attention and MLP (the base weights stay frozen).
  open_clip's attention is ``nn.MultiheadAttention``: peft must target the whole ``attn`` module (it then adapts
  both the fused q/k/v projection and ``out_proj``); targeting ``out_proj`` alone would silently do nothing.
  Optionally the token-embedding rows of chosen words train too (peft's trainable tokens): adapters on the layers
  cannot give a word the base model never learned an embedding of its own meaning.
- ``front:A-B``: text layers A..B (inclusive) plus embeddings, ln_final, text_projection and logit_scale
  (Omni-NegCLIP trains layers 0-5 of 12).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from .config import ConfigError, parse_tuning

LORA_TARGET_ALIASES = {"attn": r"attn", "mlp": r"mlp\.c_fc|mlp\.c_proj"}


@dataclass
class TextTower:
    """Where the text tower's parts live in an open_clip model (``CLIP`` keeps them at the top level,
    ``CustomTextCLIP`` under ``.text``)."""

    prefix: str
    module: nn.Module

    @property
    def layers(self) -> int:
        return len(self.module.transformer.resblocks)

    def embedding_names(self) -> list[str]:
        names = ["token_embedding", "positional_embedding", "ln_final", "text_projection"]
        return [self.prefix + n for n in names if hasattr(self.module, n) and getattr(self.module, n) is not None]


def text_tower(model: nn.Module) -> TextTower:
    text = getattr(model, "text", None)
    if isinstance(text, nn.Module) and hasattr(text, "transformer"):
        return TextTower("text.", text)
    if hasattr(model, "token_embedding") and hasattr(model, "transformer"):
        return TextTower("", model)
    raise ConfigError(f"{type(model).__name__} has no open_clip text transformer to fine-tune")


def _starts(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _unfreeze(model: nn.Module, prefixes: list[str]) -> list[str]:
    model.requires_grad_(False)
    names = []
    for name, param in model.named_parameters():
        if _starts(name, prefixes):
            param.requires_grad_(True)
            names.append(name)
    return names


def lora_target_regex(model: nn.Module, targets: str) -> str:
    """A full-match regex over module names, restricted to the text tower's residual blocks."""
    tower = text_tower(model)
    parts = []
    for item in (t.strip() for t in targets.split(",")):
        if not item:
            continue
        pattern = LORA_TARGET_ALIASES.get(item, item)
        try:
            re.compile(pattern)
        except re.error as error:
            raise ConfigError(f"--lora-targets {item!r} is not a valid regex: {error}") from None
        parts.append(pattern)
    if not parts:
        raise ConfigError(f"--lora-targets {targets!r} names nothing; use attn, mlp or regexes")
    blocks = re.escape(tower.prefix) + r"transformer\.resblocks\.\d+\."
    return blocks + "(" + "|".join(f"(?:{p})" for p in parts) + ")"


def apply_tuning(
    model: nn.Module,
    tuning: str,
    *,
    lora_rank: int = 16,
    lora_alpha: float = 32.0,
    lora_targets: str = "attn,mlp",
    lora_token_ids: list[int] | None = None,
    freeze: str = "",
    seed: int = 0,
) -> tuple[nn.Module, list[str]]:
    """Freeze everything except the tuned part; returns (model to train, names of trainable parameters).

    ``freeze`` names text-tower parameters (prefixes such as ``ln_final``) kept frozen under full/front tuning
    (NegationCLIP's code freezes ln_final). For ``lora`` the returned model is a ``peft.PeftModel`` around ``model``
    (LoRA layers injected in place); ``lora_token_ids`` are token ids whose embedding rows train beside it.
    """
    mode, layer_range = parse_tuning(tuning)
    if mode == "lora":
        return _apply_lora(model, lora_rank, lora_alpha, lora_targets, lora_token_ids or [], seed)
    tower = text_tower(model)
    scale = ["logit_scale"]
    if mode == "full":
        names = _unfreeze(model, tower.embedding_names() + [tower.prefix + "transformer"] + scale)
    else:
        start, end = layer_range
        if end >= tower.layers:
            raise ConfigError(
                f"--tuning {tuning}: the text tower has {tower.layers} layers (0-{tower.layers - 1}); "
                f"layer {end} does not exist"
            )
        layers = [f"{tower.prefix}transformer.resblocks.{i}" for i in range(start, end + 1)]
        names = _unfreeze(model, tower.embedding_names() + layers + scale)
    return model, _refreeze(model, names, tower, freeze)


def _refreeze(model: nn.Module, names: list[str], tower: TextTower, freeze: str) -> list[str]:
    frozen = [tower.prefix + item.strip() for item in freeze.split(",") if item.strip()]
    for prefix in frozen:
        if not any(_starts(name, [prefix]) for name in names):
            raise ConfigError(
                f"--freeze {prefix.removeprefix(tower.prefix)!r} names no trainable text-tower parameter; "
                "e.g. ln_final, token_embedding, text_projection, transformer.resblocks.0"
            )
    params = dict(model.named_parameters())
    for name in names:
        if _starts(name, frozen):
            params[name].requires_grad_(False)
    return [name for name in names if not _starts(name, frozen)]


def _apply_lora(model, rank, alpha, targets, token_ids, seed):
    import peft

    regex = lora_target_regex(model, targets)
    matched = [name for name, _ in model.named_modules() if re.fullmatch(regex, name)]
    if not matched:
        raise ConfigError(
            f"--lora-targets {targets!r} matches no module of the text tower (regex {regex!r}); "
            "text modules look like " + ", ".join(_example_modules(model))
        )
    unsupported = [n for n in matched if not isinstance(model.get_submodule(n), (nn.Linear, nn.MultiheadAttention))]
    if unsupported:
        raise ConfigError(
            f"--lora-targets {targets!r} matches modules LoRA cannot adapt (only Linear and MultiheadAttention): "
            + ", ".join(unsupported[:5])
        )
    model.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokens = {text_tower(model).prefix + "token_embedding": sorted(set(token_ids))} if token_ids else None
        config = peft.LoraConfig(
            r=rank,
            lora_alpha=alpha,
            target_modules=regex,
            lora_dropout=0.0,
            bias="none",
            trainable_token_indices=tokens,
        )
        peft_model = peft.get_peft_model(model, config)
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    return peft_model, names


def word_token_ids(tokenizer, words: list[str]) -> list[int]:
    """The token ids ``tokenizer`` writes for ``words`` (each alone, without start/end-of-text), sorted, unique."""
    ids: set[int] = set()
    for row in tokenizer(words) if words else []:
        end = int(row.argmax())  # CLIP's end-of-text token has the largest id
        ids.update(int(i) for i in row[1:end])
    return sorted(ids)


def _example_modules(model) -> list[str]:
    tower = text_tower(model)
    prefix = tower.prefix + "transformer.resblocks.0."
    return [n for n, _ in model.named_modules() if n.startswith(prefix)][:6]


def open_clip_model(model: nn.Module) -> nn.Module:
    """The open_clip model inside a (possibly peft-wrapped) training model."""
    import peft

    if isinstance(model, peft.PeftModel):
        return model.base_model.model
    return model


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute the text tower's residual blocks in backward (open_clip's flag; the frozen vision tower never
    runs backward, so it is left alone)."""
    text_tower(open_clip_model(model)).module.transformer.grad_checkpointing = True


def clamp_logit_scale(model: nn.Module) -> None:
    """CLIP's temperature stays in [0, ln 100] (scale <= 100), as in CLIP and Omni-NegCLIP."""
    import math

    with torch.no_grad():
        open_clip_model(model).logit_scale.clamp_(0, math.log(100))
