"""Turn any negation-aware CLIP source into the transformers text module a downstream tool expects.

Every integration goes through :func:`text_module_from_source`: load the source (anything
:func:`negation_plugins.load_clip` takes, an already loaded :class:`~negation_plugins.ClipBundle`, or a
ready transformers ``CLIPTextModel`` / ``CLIPTextModelWithProjection``), convert it exactly with
:mod:`negation_plugins.convert`, then check that it fits the slot it goes into (width, projection size,
context length, vocabulary and tokenizer ids) so a wrong size fails here with a sentence, not deep inside a
UNet with a shape error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from negation_plugins.factory import ClipBundle, load_clip

# Sentences whose token ids must agree between the source's tokenizer and the target's tokenizer.
TOKENIZER_PROBES = ("a street without cars, not a dog.", "No people; only a red bicycle & 2 trees!")


class IncompatibleEncoderError(ValueError):
    """The source's text encoder cannot replace the target's (wrong width, context length, vocabulary...)."""


@dataclass
class Slot:
    """Where a text encoder goes and what it must look like there.

    ``kind`` is the :func:`negation_plugins.convert.open_clip_to_transformers` kind ("text" or
    "text_with_projection"); ``hidden_size`` / ``projection_dim`` / ``vocab_size`` are the sizes the consumer
    was built for (``None``: not checked); ``context_length`` is the number of tokens the target's tokenizer
    produces; ``tokenizer`` (optional) is the target's tokenizer whose ids must equal the source's.
    """

    target: str
    kind: str = "text"
    hidden_size: int | None = None
    projection_dim: int | None = None
    vocab_size: int | None = None
    context_length: int | None = None
    tokenizer: Any = None
    hint: str = ""

    @classmethod
    def like(cls, target: str, encoder, tokenizer=None, hint: str = "") -> Slot:
        """The slot currently held by a transformers ``encoder`` (its sizes are what the consumer expects)."""
        config = encoder.config
        with_projection = _is_with_projection(encoder)
        return cls(
            target=target,
            kind="text_with_projection" if with_projection else "text",
            hidden_size=config.hidden_size,
            projection_dim=config.projection_dim if with_projection else None,
            vocab_size=config.vocab_size,
            context_length=getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None,
            tokenizer=tokenizer,
            hint=hint,
        )


def _is_with_projection(module) -> bool:
    from transformers import CLIPTextModelWithProjection

    return isinstance(module, CLIPTextModelWithProjection)


def describe_source(source) -> str:
    if isinstance(source, ClipBundle):
        return repr(source.spec)
    if isinstance(source, torch.nn.Module):
        return f"a {type(source).__name__}"
    return repr(str(source))


def load_source(source, device: str | torch.device = "cpu") -> ClipBundle | torch.nn.Module:
    """A ClipBundle for a spec/path, the bundle itself, or a ready transformers text module as is.

    A plain folder holding ``open_clip_config.json`` (what ``trainers.finetune --output`` writes) is read
    as ``local-dir:``.
    """
    if isinstance(source, ClipBundle) and source.corrections:
        raise IncompatibleEncoderError(
            f"{source.spec!r} carries training-free corrections "
            f"({', '.join(c.describe() for c in source.corrections)}): they change the pooled text embedding only, "
            "while diffusion pipelines and CLIPSeg read per-token hidden states; load it without correction="
        )
    if isinstance(source, (ClipBundle, torch.nn.Module)):
        return source
    if isinstance(source, Path):
        source = str(source)
    if not isinstance(source, str):
        raise TypeError(
            f"cannot use a {type(source).__name__} as a text-encoder source; pass a load_clip spec "
            "('local-dir:/path', 'hf-hub:org/repo', a .pth path, a transformers folder), a ClipBundle, "
            "or a transformers CLIPTextModel"
        )
    if Path(source).is_dir() and (Path(source) / "open_clip_config.json").is_file():
        source = f"local-dir:{source}"  # a trainer output folder (open_clip weights at the top level)
    return load_clip(source, device=device)


def text_module_from_source(
    source,
    slot: Slot,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> torch.nn.Module:
    """The transformers text module (``CLIPTextModel`` or ``CLIPTextModelWithProjection``) for ``slot``.

    Raises :class:`IncompatibleEncoderError` naming the source, the target and the mismatch.
    """
    loaded = load_source(source)
    name = describe_source(source)
    if isinstance(loaded, ClipBundle):
        _check_bundle_tokenizer(loaded, slot, name)
        from negation_plugins.convert import open_clip_to_transformers

        module = open_clip_to_transformers(loaded.model, slot.kind)
    else:
        module = _reuse_transformers_module(loaded, slot, name)
    check_fits(module, slot, name)
    module = module.to(device=device or "cpu", dtype=dtype or torch.float32)
    module.eval()
    module.requires_grad_(False)
    return module


def _reuse_transformers_module(module, slot: Slot, name: str):
    from transformers import CLIPTextModel

    if slot.kind == "text_with_projection" and not _is_with_projection(module):
        raise IncompatibleEncoderError(
            f"{slot.target} needs a CLIPTextModelWithProjection (its pooled, projected output is used); "
            f"got {name}. Pass a load_clip spec or ClipBundle instead and it is converted for you."
        )
    if slot.kind == "text" and not isinstance(module, CLIPTextModel):
        raise IncompatibleEncoderError(f"{slot.target} needs a transformers CLIPTextModel; got {name}")
    return module


def check_fits(module, slot: Slot, name: str) -> None:
    """Compare the converted module's sizes with the slot's; raise one error listing every mismatch."""
    config = module.config
    problems = []
    if slot.hidden_size is not None and config.hidden_size != slot.hidden_size:
        problems.append(f"its text width is {config.hidden_size} but {slot.target} needs {slot.hidden_size}")
    if slot.projection_dim is not None and config.projection_dim != slot.projection_dim:
        problems.append(
            f"its text projection gives {config.projection_dim}-d pooled embeddings but {slot.target} needs "
            f"{slot.projection_dim}-d"
        )
    if slot.vocab_size is not None and config.vocab_size != slot.vocab_size:
        problems.append(f"its vocabulary has {config.vocab_size} tokens but {slot.target}'s has {slot.vocab_size}")
    if slot.context_length is not None and config.max_position_embeddings < slot.context_length:
        problems.append(
            f"it reads at most {config.max_position_embeddings} tokens but {slot.target}'s tokenizer "
            f"produces {slot.context_length}"
        )
    if problems:
        message = f"cannot put {name} into {slot.target}: " + "; ".join(problems)
        raise IncompatibleEncoderError(message + (f". {slot.hint}" if slot.hint else ""))


def _check_bundle_tokenizer(bundle: ClipBundle, slot: Slot, name: str) -> None:
    """The target keeps its own tokenizer, so both tokenizers must give the same ids (up to padding)."""
    if slot.tokenizer is None:
        return
    for probe in TOKENIZER_PROBES:
        theirs = list(slot.tokenizer(probe, truncation=True, max_length=slot.context_length or 77).input_ids)
        ours = [int(i) for i in bundle.tokenizer([probe])[0].tolist()]
        eos = theirs[-1]
        ours = ours[: ours.index(eos) + 1] if eos in ours else ours
        if ours != theirs:
            raise IncompatibleEncoderError(
                f"cannot put {name} into {slot.target}: its tokenizer gives ids {ours[:12]}... for {probe!r} "
                f"but {slot.target}'s tokenizer gives {theirs[:12]}...; the encoder would read different tokens"
            )
