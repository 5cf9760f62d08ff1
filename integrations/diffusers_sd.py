"""Stable Diffusion 1.x / 2.x: put a negation-aware CLIP text encoder into a diffusers pipeline.

Two ways, same checks::

    pipe = StableDiffusionPipeline.from_pretrained(base)
    negation_plugins.apply(pipe, "negationclip_ViT-L14.pth")       # swap in place (converted on the fly)
    integrations.restore(pipe)                                      # stock encoder back

    encoder = negation_text_encoder("negationclip_ViT-L14.pth", like=base_text_encoder_config)
    pipe = StableDiffusionPipeline.from_pretrained(base, text_encoder=encoder)

SD 1.x feeds the UNet the per-token ``last_hidden_state`` of a ViT-L/14 text tower (768 wide), SD 2.x that of
OpenCLIP ViT-H/14 (1024 wide); a source of another width is refused with a message, not a shape error. The
pipeline keeps its own tokenizer: its ids are checked against the source's tokenizer. The swapped encoder is a
plain ``CLIPTextModel`` so ``StableDiffusionImg2ImgPipeline.from_pipe(pipe)`` (and friends) carry it over.
"""

from __future__ import annotations

import torch

from negation_plugins import Integration
from negation_plugins.hookspecs import hookimpl

from .pipelines import diffusers_pipeline, put_text_encoder
from .text_encoders import Slot, text_module_from_source

__all__ = ["StableDiffusionIntegration", "negation_text_encoder"]


def _width_hint(pipe) -> str:
    unet = getattr(pipe, "unet", None)
    width = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
    if width is None:
        return ""
    return (
        f"The UNet's cross-attention reads {width}-wide token states (SD 1.x: 768 = CLIP ViT-L/14 text, "
        "e.g. negationclip_ViT-L14.pth; SD 2.x: 1024 = OpenCLIP ViT-H/14)"
    )


class StableDiffusionIntegration(Integration):
    """Any diffusers pipeline with one CLIP ``text_encoder`` + ``tokenizer`` (SD 1.x/2.x and derived pipelines)."""

    name = "diffusers-sd"
    description = "Stable Diffusion 1.x/2.x pipelines (text_encoder: CLIPTextModel); restore with integrations.restore"

    def matches(self, target) -> bool:
        if not diffusers_pipeline(target) or "text_encoder_2" in target.components:
            return False
        from transformers import CLIPTextModel

        return (
            isinstance(getattr(target, "text_encoder", None), CLIPTextModel)
            and getattr(target, "tokenizer", None) is not None
        )

    def apply(self, pipe, source, **options):
        """Swap ``pipe.text_encoder`` for ``source``'s text tower (converted, checked); return ``pipe``."""
        if options:
            raise TypeError(f"{self.name} takes no options; got {', '.join(options)}")
        put_text_encoder(pipe, "text_encoder", source, hint=_width_hint(pipe))
        return pipe


def negation_text_encoder(
    source,
    like=None,
    *,
    tokenizer=None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
):
    """A transformers ``CLIPTextModel`` from ``source``, for ``from_pretrained(..., text_encoder=...)``.

    ``like`` is what it must fit: a pipeline, the stock ``CLIPTextModel``, or its ``CLIPTextConfig`` (sizes
    are checked); ``None`` converts without checks. ``tokenizer`` (or the pipeline's) is checked for equal ids.
    """
    from transformers import PretrainedConfig

    if like is None:
        slot = Slot(
            target="text_encoder", tokenizer=tokenizer, context_length=getattr(tokenizer, "model_max_length", None)
        )
    elif diffusers_pipeline(like):
        slot = Slot.like(
            f"{type(like).__name__}.text_encoder", like.text_encoder, tokenizer or like.tokenizer, _width_hint(like)
        )
        dtype, device = dtype or like.text_encoder.dtype, device or like.text_encoder.device
    elif isinstance(like, PretrainedConfig):
        slot = Slot(
            target="a text_encoder configured like the given CLIPTextConfig",
            hidden_size=like.hidden_size,
            vocab_size=like.vocab_size,
            context_length=getattr(tokenizer, "model_max_length", None),
            tokenizer=tokenizer,
        )
    else:
        slot = Slot.like(f"a text_encoder like the given {type(like).__name__}", like, tokenizer)
    return text_module_from_source(source, slot, dtype=dtype, device=device)


@hookimpl
def register_integrations(register):
    register(StableDiffusionIntegration())
