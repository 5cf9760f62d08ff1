"""Stable Diffusion XL: put negation-aware encoders into ``text_encoder`` and/or ``text_encoder_2``.

SDXL reads ``hidden_states[-2]`` of both encoders (CLIP ViT-L/14, 768 wide, and OpenCLIP bigG/14, 1280 wide,
concatenated) plus the *pooled, projected* output of ``text_encoder_2`` (a ``CLIPTextModelWithProjection``)::

    negation_plugins.apply(pipe, "negationclip_ViT-L14.pth")                  # goes where it fits: text_encoder
    negation_plugins.apply(pipe, {"text_encoder": src_l, "text_encoder_2": src_g})   # both at once
    negation_plugins.apply(pipe, src, slot="text_encoder_2")                  # explicit slot

With a single source and no ``slot``, the source goes into the one slot whose sizes it fits; if it fits both
(equal widths) you must say which.
"""

from __future__ import annotations

from collections.abc import Mapping

from negation_plugins import Integration
from negation_plugins.hookspecs import hookimpl

from .pipelines import (
    TEXT_ENCODER_SLOTS,
    diffusers_pipeline,
    encoder_placement,
    put_text_encoder,
    slot_of,
    swap_text_encoder,
)
from .text_encoders import (
    IncompatibleEncoderError,
    load_source,
    text_module_from_source,
)

HINT = "SDXL needs CLIP ViT-L/14 text (768 wide) in text_encoder and OpenCLIP bigG/14 text (1280 wide, projection 1280) in text_encoder_2"


class StableDiffusionXLIntegration(Integration):
    """Any diffusers pipeline with a ``text_encoder_2`` (SDXL base, refiner, img2img, inpaint...)."""

    name = "diffusers-sdxl"
    description = "Stable Diffusion XL pipelines: text_encoder and/or text_encoder_2 (slot=... or {slot: source})"

    def matches(self, target) -> bool:
        return diffusers_pipeline(target) and "text_encoder_2" in target.components

    def apply(self, pipe, source, *, slot: str | None = None):
        """Swap one or both encoders; ``source`` may be ``{slot: source}``. Returns ``pipe``."""
        if isinstance(source, Mapping):
            if slot is not None:
                raise TypeError("pass either slot=... or a {slot: source} mapping, not both")
            unknown = set(source) - set(TEXT_ENCODER_SLOTS)
            if unknown:
                raise ValueError(f"unknown SDXL slot(s) {sorted(unknown)}; slots are {', '.join(TEXT_ENCODER_SLOTS)}")
            assignments = dict(source)
        elif slot is not None:
            if slot not in TEXT_ENCODER_SLOTS:
                raise ValueError(f"unknown SDXL slot {slot!r}; slots are {', '.join(TEXT_ENCODER_SLOTS)}")
            assignments = {slot: source}
        else:
            name, encoder = self._fitting_encoder(pipe, source)
            dtype, device = encoder_placement(pipe, name)
            swap_text_encoder(pipe, name, encoder.to(device=device, dtype=dtype))
            return pipe
        for name, each in assignments.items():
            put_text_encoder(pipe, name, each, hint=HINT)
        return pipe

    def _fitting_encoder(self, pipe, source):
        """(slot, converted encoder) for the one slot the source fits; converted once per slot tried."""
        loaded = load_source(source)
        fits, refusals = [], []
        for name in TEXT_ENCODER_SLOTS:
            if getattr(pipe, name, None) is None:
                continue
            try:
                fits.append((name, text_module_from_source(loaded, slot_of(pipe, name))))
            except IncompatibleEncoderError as refusal:
                refusals.append(str(refusal))
        if len(fits) == 1:
            return fits[0]
        if fits:
            names = " and ".join(name for name, _ in fits)
            raise ValueError(f"the source fits both {names}; say which with slot='text_encoder' or 'text_encoder_2'")
        raise IncompatibleEncoderError(" | ".join(refusals) + f". {HINT}")


@hookimpl
def register_integrations(register):
    register(StableDiffusionXLIntegration())
