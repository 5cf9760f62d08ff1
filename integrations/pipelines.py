"""Swapping text encoders in diffusers pipelines, and putting the stock ones back.

A swap assigns ``pipe.<slot> = new_encoder`` (diffusers records it in the pipeline config, so
``SomeOtherPipeline.from_pipe(pipe)`` carries the new encoder over), and remembers the stock encoder:

* on the pipeline, in the documented attribute ``pipe.stock_text_encoders`` (``{slot: module}``), and
* keyed by the swapped encoder module itself, so :func:`restore` also works on a pipeline made with
  ``from_pipe`` from a swapped one (both share the same encoder module).
"""

from __future__ import annotations

import weakref

import torch

STOCK_ATTRIBUTE = "stock_text_encoders"
TEXT_ENCODER_SLOTS = ("text_encoder", "text_encoder_2")

# swapped encoder module -> the stock module it replaced
_stock_by_swapped: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = weakref.WeakKeyDictionary()


def swap_text_encoder(pipe, slot: str, encoder: torch.nn.Module) -> None:
    """Put ``encoder`` into ``pipe.<slot>``, remembering the stock encoder (only the first time)."""
    current = getattr(pipe, slot)
    stock = _stock_by_swapped.get(current, current) if current is not None else None
    stock_map = dict(getattr(pipe, STOCK_ATTRIBUTE, None) or {})
    stock_map.setdefault(slot, stock)
    setattr(pipe, slot, encoder)
    # a plain attribute: not a pipeline component, so diffusers neither saves nor moves it
    object.__setattr__(pipe, STOCK_ATTRIBUTE, stock_map)
    if stock is not None:
        _stock_by_swapped[encoder] = stock


def restore(pipe, slots: tuple[str, ...] | None = None):
    """Put the stock text encoders back into ``pipe`` (all swapped slots, or just ``slots``); return ``pipe``.

    Raises ``ValueError`` when nothing was swapped, so a forgotten swap is not mistaken for a restore.
    """
    stock_map = dict(getattr(pipe, STOCK_ATTRIBUTE, None) or {})
    restored = []
    for slot in slots or TEXT_ENCODER_SLOTS:
        current = getattr(pipe, slot, None)
        stock = stock_map.pop(slot, None) or (_stock_by_swapped.get(current) if current is not None else None)
        if stock is None:
            continue
        setattr(pipe, slot, stock)
        restored.append(slot)
    if not restored:
        raise ValueError(
            f"{type(pipe).__name__} has no swapped text encoder to restore"
            + (f" in {', '.join(slots)}" if slots else "")
        )
    object.__setattr__(pipe, STOCK_ATTRIBUTE, stock_map)
    return pipe


def encoder_placement(pipe, slot: str) -> tuple[torch.dtype, torch.device]:
    """dtype and device the new encoder must have: the stock encoder's, else the UNet's."""
    reference = getattr(pipe, slot, None) or getattr(pipe, "unet", None)
    if reference is None:
        return torch.float32, torch.device("cpu")
    return reference.dtype, reference.device


def slot_of(pipe, slot: str, hint: str = ""):
    """The :class:`~integrations.text_encoders.Slot` that ``pipe.<slot>`` occupies (sizes of its current encoder)."""
    from .text_encoders import Slot

    encoder = getattr(pipe, slot, None)
    if encoder is None:
        raise ValueError(f"{type(pipe).__name__} has no {slot} to replace")
    tokenizer = getattr(pipe, "tokenizer_2" if slot == "text_encoder_2" else "tokenizer", None)
    return Slot.like(f"{type(pipe).__name__}.{slot}", encoder, tokenizer, hint=hint)


def put_text_encoder(pipe, slot: str, source, hint: str = "") -> torch.nn.Module:
    """Convert ``source`` for ``pipe.<slot>`` (checked, on the pipeline's dtype/device) and swap it in."""
    from .text_encoders import text_module_from_source

    dtype, device = encoder_placement(pipe, slot)
    encoder = text_module_from_source(source, slot_of(pipe, slot, hint), dtype=dtype, device=device)
    swap_text_encoder(pipe, slot, encoder)
    return encoder


def diffusers_pipeline(target) -> bool:
    """True for a diffusers pipeline, without importing diffusers when the caller never did."""
    import sys

    diffusers = sys.modules.get("diffusers")
    return diffusers is not None and isinstance(target, diffusers.DiffusionPipeline)
