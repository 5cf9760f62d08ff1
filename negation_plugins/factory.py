"""One door to every CLIP: ``load_clip(spec)`` returns a :class:`ClipBundle` whatever the source format.

The model inside a bundle is always an open_clip model (``CLIP`` / ``CustomTextCLIP``), so training,
benchmarks and integrations deal with one module layout; other formats are converted on load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from . import plugins
from .hub import CHECKPOINT_SUFFIXES, NAME_GRAMMAR, fetch, parse_hub_name


@dataclass
class ClipBundle:
    """A CLIP model with its tokenizer and image preprocessing.

    ``model`` is an open_clip model. Text-only sources (e.g. a transformers ``CLIPTextModel`` folder)
    have ``model.visual = None``; :meth:`encode_image` then raises a clear error.
    """

    model: torch.nn.Module
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    preprocess: Callable[[Any], torch.Tensor] | None
    spec: str
    info: dict = field(default_factory=dict)
    corrections: list = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def has_vision(self) -> bool:
        return getattr(self.model, "visual", None) is not None

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))

    def with_corrections(self, corrections) -> ClipBundle:
        """The same model with training-free corrections (specs or objects) stacked on, labelled ``SPEC + ...``."""
        from .corrections import parse_corrections

        added = parse_corrections(corrections)
        label = " + ".join([self.spec, *(c.describe() for c in added)])
        return replace(self, corrections=[*self.corrections, *added], spec=label)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    @torch.no_grad()
    def encode_text(
        self, texts: Sequence[str], normalize: bool = True, batch_size: int = 256, corrected: bool = True
    ) -> torch.Tensor:
        """Embed captions (no grad, eval mode); normalized by default; the bundle's corrections applied unless
        ``corrected=False`` (a correction works on unit vectors; unnormalized output keeps each raw norm)."""
        self.model.eval()
        chunks = [
            self.model.encode_text(self.tokenize(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)
        ]
        if not chunks:
            return torch.empty(0)
        raw = torch.cat(chunks)
        norms = raw.norm(dim=-1, keepdim=True)
        unit = raw / norms
        if corrected and self.corrections:
            from .corrections import apply_corrections

            unit = apply_corrections(self.corrections, self, list(texts), unit)
        return unit if normalize else unit * norms

    @torch.no_grad()
    def encode_image(
        self, images: Sequence[Any] | torch.Tensor, normalize: bool = True, batch_size: int = 256
    ) -> torch.Tensor:
        """Embed PIL images (preprocessed here) or an already preprocessed batch tensor."""
        if not self.has_vision:
            raise ValueError(f"{self.spec!r} is a text-only model: it has no vision tower to encode images")
        self.model.eval()
        if not isinstance(images, torch.Tensor):
            images = torch.stack([self.preprocess(img) for img in images]) if len(images) else torch.empty(0)
        chunks = [
            self.model.encode_image(images[i : i + batch_size].to(self.device), normalize=normalize)
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(chunks) if chunks else torch.empty(0)


class Backend:
    """A CLIP format. Subclasses set ``name`` and implement :meth:`can_load` and :meth:`load`."""

    name: str = ""
    description: str = ""

    def can_load(self, spec: str) -> bool:
        raise NotImplementedError

    def load(self, spec: str, *, device: str | torch.device = "cpu", **options) -> ClipBundle:
        raise NotImplementedError


def load_clip(
    spec: str, *, device: str | torch.device = "cpu", backend: str | None = None, correction=None, **options
) -> ClipBundle:
    """Load any CLIP the registered backends understand, from a local path or the Hugging Face Hub.

    Local: open_clip names with a pretrained tag (``ViT-B-32:openai``), ``local-dir:/path`` (an open_clip
    folder), OpenAI-layout checkpoint files (``negationclip_ViT-B32.pth``, ``.pt``/``.bin``/``.safetensors``,
    ``{"model": ...}`` wrappers), transformers CLIP folders. An existing local path always wins.

    Hub (fetched with huggingface_hub: its cache, ``HF_HOME``, ``HF_ENDPOINT``, token, ``HF_HUB_OFFLINE``):
    ``hf-hub:ORG/REPO`` (an open_clip repo), ``hf-hub:ORG/REPO/PATH/FILE.pth`` (one checkpoint file in any
    repo, e.g. ``hf-hub:jerryray/negationclip/negationclip_ViT-L14.pth``), ``ORG/REPO`` (a transformers CLIP
    repo, e.g. ``openai/clip-vit-large-patch14``), ``ORG/REPO/SUBFOLDER`` (a diffusers ``text_encoder``), each
    with an optional ``@REVISION``. The bundle keeps the name as ``spec``; ``info["hub"]`` says what was fetched.

    ``backend`` forces one backend by name instead of asking each in turn. ``correction``: one or more
    training-free corrections applied in :meth:`ClipBundle.encode_text` (``"span-subtraction"``,
    ``"steering:FILE"``; see :mod:`negation_plugins.corrections`).
    """
    from .corrections import parse_corrections

    spec = str(spec)
    corrections = parse_corrections(correction)
    hub_name = parse_hub_name(spec)
    if hub_name is None:
        bundle = _load_local(spec, device=device, backend=backend, **options)
    else:
        local, commit = fetch(hub_name)
        bundle = _load_local(local, device=device, backend=backend, **options)
        bundle.spec = spec
        bundle.info["hub"] = {"repo_id": hub_name.repo_id, "path": hub_name.path, "commit": commit}
    bundle.corrections = corrections
    return bundle


def _load_local(spec: str, *, device, backend: str | None, **options) -> ClipBundle:
    if backend is not None:
        return plugins.get_one("backends", backend).load(spec, device=device, **options)
    backends = plugins.get("backends")
    for candidate in backends.values():
        if candidate.can_load(spec):
            return candidate.load(spec, device=device, **options)
    if spec.endswith(CHECKPOINT_SUFFIXES):
        raise FileNotFoundError(f"{spec}: no such checkpoint file (one in a Hub repo is named hf-hub:ORG/REPO/FILE)")
    raise ValueError(
        f"no backend can load {spec!r} (registered backends: {', '.join(backends)}). Local names: an open_clip "
        "name ('ViT-B-32:openai'), 'local-dir:/path', an OpenAI-format .pth/.pt/.bin/.safetensors file, a "
        f"transformers CLIP folder. Hub names: {NAME_GRAMMAR}."
    )
