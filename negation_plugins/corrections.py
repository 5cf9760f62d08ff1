"""Training-free corrections: change a caption's text embedding at encode time, on any loaded CLIP.

A correction stacks on a base or a fine-tuned model (``load_clip(spec, correction=[...])``) and only touches
captions that contain a negation cue, so affirmative retrieval and zero-shot classification are unchanged by
construction. Built-ins:

- ``span-subtraction`` ("Seeing What's Not There", ICLR 2026): find each negated phrase by rules, embed it, and
  remove the caption's component along it: ``e* = e - scale * (proj_{e_neg}(e) - a)``, ``a`` the mean embedding of
  neutral words. The paper tunes ``scale`` ~1.9 for CLIP, ~0.3 for a negation fine-tuned CLIP.
- ``steering:FILE`` (after arXiv 2603.20554): a negation direction fitted from (caption, negation) text pairs
  (:func:`fit_steering`, ``negclip corrections fit``), saved as a small safetensors file, added to the embedding
  of negated captions. This is the embedding-level variant: one direction at the output, not one per layer.

Where a correction cannot apply: diffusion pipelines and CLIPSeg condition on per-token hidden states, not on
the pooled embedding, so :mod:`integrations` refuses a corrected model instead of silently dropping the correction.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from . import plugins
from .hookspecs import hookimpl
from .lexicon import split_negations

NEUTRAL_WORDS = ("a", "the", "this", "that", "it", "thing", "something", "there", "here", "is")
STEERING_FORMAT = "negation-steering/1"


class CorrectionError(ValueError):
    """A correction spec, option or file that cannot be used."""


class Correction:
    """A text-embedding correction. Registered as a class: ``cls(**options)`` makes one.

    Subclasses set ``name``/``description`` and implement :meth:`correct`, which receives unit-norm embeddings
    of ``texts`` from ``clip`` and returns unit-norm embeddings of the same shape.
    """

    name: str = ""
    description: str = ""

    def correct(self, clip, texts: Sequence[str], embeddings: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _raw_text_embeddings(clip, texts: Sequence[str]) -> torch.Tensor:
    """Uncorrected unit embeddings (a correction must not see its own output)."""
    return clip.encode_text(list(texts), corrected=False)


class SpanSubtraction(Correction):
    name = "span-subtraction"
    description = "Subtract the embedding of each rule-found negated phrase (Seeing What's Not There)"

    def __init__(self, scale: float | str = 1.9, neutral_words: Sequence[str] = NEUTRAL_WORDS):
        try:
            self.scale = float(scale)
        except ValueError:
            raise CorrectionError(f"span-subtraction: scale must be a number, got {scale!r}") from None
        self.neutral_words = tuple(neutral_words)
        self._neutral: dict[int, torch.Tensor] = {}

    def describe(self) -> str:
        return f"{self.name}:scale={self.scale:g}"

    def neutral_mean(self, clip) -> torch.Tensor:
        key = id(clip.model)
        if key not in self._neutral:
            self._neutral[key] = _raw_text_embeddings(clip, self.neutral_words).mean(0)
        return self._neutral[key]

    def correct(self, clip, texts, embeddings):
        phrases = [split_negations(text)[1] for text in texts]
        wanted = sorted({p for spans in phrases for p in spans})
        if not wanted:
            return embeddings
        phrase_embeds = dict(zip(wanted, _raw_text_embeddings(clip, wanted)))
        anchor = self.neutral_mean(clip).to(embeddings)
        out = embeddings.clone()
        for i, spans in enumerate(phrases):
            for phrase in spans:
                direction = phrase_embeds[phrase].to(embeddings)
                projection = (out[i] @ direction) * direction
                out[i] = out[i] - self.scale * (projection - anchor)
        return _unit(out)


class Steering(Correction):
    name = "steering"
    description = "Add a fitted negation direction to negated captions (file from `negclip corrections fit`)"

    def __init__(self, file: str | os.PathLike | None = None, scale: float | str | None = None):
        if file is None:
            raise CorrectionError("steering needs a file: steering:PATH (make one with `negclip corrections fit`)")
        self.file = Path(file)
        self.direction, meta = read_steering(self.file)
        self.scale = float(meta["scale"] if scale is None else scale)
        self.model_key = meta["model"]

    def describe(self) -> str:
        digest = hashlib.sha256(self.direction.numpy().tobytes()).hexdigest()[:12]
        return f"{self.name}:{self.file.name}:scale={self.scale:g}:{digest}"

    def correct(self, clip, texts, embeddings):
        if self.direction.shape[0] != embeddings.shape[-1]:
            raise CorrectionError(
                f"{self.file}: steering direction is {self.direction.shape[0]}-d, the model's text embeddings are "
                f"{embeddings.shape[-1]}-d (fitted for another model)"
            )
        negated = torch.tensor([bool(split_negations(t)[1]) for t in texts], device=embeddings.device)
        if not negated.any():
            return embeddings
        shifted = _unit(embeddings + self.scale * self.direction.to(embeddings))
        return torch.where(negated[:, None], shifted, embeddings)


def text_model_key(clip) -> str:
    """A short fingerprint of the text tower's weights: a steering file names the model it was fitted on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(clip.model.state_dict().items()):
        if name.startswith("visual."):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes()[:4096])
    return digest.hexdigest()[:16]


def fit_steering(clip, pairs: Sequence[tuple[str, str]], scale: float = 1.0) -> tuple[torch.Tensor, dict]:
    """The unit mean difference (negation - caption) over text pairs, with the metadata a file records."""
    if not pairs:
        raise CorrectionError("fit_steering needs at least one (caption, negation) pair")
    captions = _raw_text_embeddings(clip, [c for c, _ in pairs])
    negations = _raw_text_embeddings(clip, [n for _, n in pairs])
    direction = _unit((negations - captions).mean(0))
    return direction, {"scale": float(scale), "model": text_model_key(clip), "pairs": len(pairs)}


def save_steering(path: str | os.PathLike, direction: torch.Tensor, meta: dict) -> Path:
    from safetensors.torch import save_file

    from .atomic import atomic_write

    metadata = {"format": STEERING_FORMAT, **{k: str(v) for k, v in meta.items()}}
    return atomic_write(
        path, lambda tmp: save_file({"direction": direction.detach().float().cpu()}, str(tmp), metadata=metadata)
    )


def read_steering(path: str | os.PathLike) -> tuple[torch.Tensor, dict]:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CorrectionError(f"{path}: steering file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            direction = handle.get_tensor("direction")
    except (SafetensorError, OSError, KeyError) as err:
        raise CorrectionError(f"{path}: not a steering file ({type(err).__name__}: {err})") from None
    if meta.get("format") != STEERING_FORMAT or direction.ndim != 1:
        raise CorrectionError(f"{path}: not a steering file (format {meta.get('format')!r})")
    return direction, meta


def parse_correction(spec: str | Correction) -> Correction:
    """``NAME[:ARG][:key=value...]`` -> a correction; a bare ARG is the first option (e.g. ``steering:FILE``)."""
    if isinstance(spec, Correction):
        return spec
    name, *parts = str(spec).split(":")
    try:
        factory = plugins.get_one("corrections", name)
    except KeyError as err:
        raise CorrectionError(str(err.args[0])) from None
    args, options = [], {}
    for part in parts:
        key, eq, value = part.partition("=")
        if eq:
            options[key] = value
        else:
            args.append(part)
    try:
        return factory(*args, **options)
    except TypeError as err:
        raise CorrectionError(f"correction {spec!r}: {err}") from None


def parse_corrections(specs) -> list[Correction]:
    if specs is None:
        return []
    if isinstance(specs, (str, Correction)):
        specs = [specs]
    return [parse_correction(s) for s in specs]


def apply_corrections(corrections: Sequence[Correction], clip, texts, embeddings: torch.Tensor) -> torch.Tensor:
    """Apply corrections in order to unit-norm ``embeddings`` of ``texts``."""
    for correction in corrections:
        embeddings = correction.correct(clip, texts, embeddings)
    return embeddings


@hookimpl
def register_corrections(register):
    register(SpanSubtraction)
    register(Steering)
