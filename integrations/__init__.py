"""Negation-aware text encoders inside the tools people use: diffusers SD/SDXL, LoRA, CLIPSeg, Neg-T2I.

Each toolkit is an integration plugin (a :class:`negation_plugins.Integration` instance) reached through
``negation_plugins.apply(target, source)``; :func:`restore` puts the stock encoder back whatever the target.
"""

from .pipelines import STOCK_ATTRIBUTE
from .text_encoders import IncompatibleEncoderError

__all__ = ["STOCK_ATTRIBUTE", "IncompatibleEncoderError", "restore"]


def restore(target, slots: tuple[str, ...] | None = None):
    """Undo :func:`negation_plugins.apply`: stock text encoder(s) back in a pipeline or CLIPSeg model."""
    from . import clipseg, pipelines

    if clipseg.is_clipseg(target):
        return clipseg.restore(target)
    return pipelines.restore(target, slots)
