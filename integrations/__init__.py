"""Negation-aware text encoders inside the tools people use: diffusers SD/SDXL, LoRA, CLIPSeg, Neg-T2I.

Each toolkit is an integration plugin reached through ``negation_plugins.apply(target, source)``.
"""

from .pipelines import STOCK_ATTRIBUTE, restore
from .text_encoders import IncompatibleEncoderError

__all__ = ["IncompatibleEncoderError", "STOCK_ATTRIBUTE", "restore"]
