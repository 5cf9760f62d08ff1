"""CLIPSeg referring segmentation with a negation-aware text tower.

transformers' ``CLIPSegForImageSegmentation`` conditions its decoder on the projected, pooled CLIP text
embedding of the phrase (``conditional_embeddings``, ``projection_dim`` wide; CLIP ViT-B/16 in the released
model). Swapping replaces ``clip.text_model`` and ``clip.text_projection`` with the source's text tower, converted
exactly; the decoder and vision tower stay. The projection size must equal the decoder's; the tower itself may
differ (it is rebuilt from the source's config)::

    negation_plugins.apply(clipseg, "negationclip_ViT-B16.pth")
    mask = segment(clipseg, processor, image, "a dog that is not on the sofa")
    score = miou([mask > 0.5], [ground_truth])
    integrations.restore(clipseg)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch

from negation_plugins import Integration
from negation_plugins.hookspecs import hookimpl

from .text_encoders import IncompatibleEncoderError, Slot, text_module_from_source

STOCK_ATTRIBUTE = "stock_text_tower"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _clip_part(model):
    """The ``CLIPSegModel`` inside a segmentation model (or the model itself)."""
    return getattr(model, "clip", model)


def is_clipseg(target) -> bool:
    transformers = sys.modules.get("transformers")
    if transformers is None:
        return False
    from transformers import CLIPSegForImageSegmentation, CLIPSegModel

    return isinstance(target, (CLIPSegForImageSegmentation, CLIPSegModel))


class ClipSegIntegration(Integration):
    name = "clipseg"
    description = "transformers CLIPSeg (CLIPSegForImageSegmentation / CLIPSegModel): text tower + projection"

    def matches(self, target) -> bool:
        return is_clipseg(target)

    def apply(self, model, source, *, tokenizer=None):
        """Swap the text tower and projection for ``source``'s; ``tokenizer`` (the processor's) is checked."""
        swap_text_tower(model, source, tokenizer=tokenizer)
        return model


def swap_text_tower(model, source, *, tokenizer=None) -> None:
    from transformers import CLIPSegTextConfig, CLIPSegTextModel

    clip = _clip_part(model)
    reference = next(clip.text_model.parameters())
    slot = Slot(
        target=f"{type(model).__name__} text tower",
        kind="text_with_projection",
        projection_dim=clip.config.projection_dim,
        vocab_size=clip.config.text_config.vocab_size,
        context_length=getattr(tokenizer, "model_max_length", None),
        tokenizer=tokenizer,
        hint=f"its decoder is conditioned on {clip.config.projection_dim}-d text embeddings (CLIPSeg rd64: CLIP ViT-B/16, 512)",
    )
    converted = text_module_from_source(source, slot, dtype=reference.dtype, device=reference.device)
    text_config = converted.config
    seg_config = CLIPSegTextConfig(
        **{
            key: getattr(text_config, key)
            for key in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "max_position_embeddings",
                "hidden_act",
                "layer_norm_eps",
                "pad_token_id",
                "bos_token_id",
                "eos_token_id",
            )
        }
    )
    seg_config._attn_implementation = clip.config.text_config._attn_implementation
    text_model = CLIPSegTextModel(seg_config)
    text_state = {
        k.removeprefix("text_model."): v for k, v in converted.state_dict().items() if k.startswith("text_model.")
    }
    missing, unexpected = text_model.load_state_dict(text_state, strict=False)
    if missing or unexpected:
        raise IncompatibleEncoderError(
            f"converted text tower does not fit CLIPSegTextModel: missing {sorted(missing)[:6]}, unexpected {sorted(unexpected)[:6]}"
        )
    projection = torch.nn.Linear(seg_config.hidden_size, clip.config.projection_dim, bias=False)
    projection.weight.data.copy_(converted.text_projection.weight)
    text_model.to(device=reference.device, dtype=reference.dtype).eval().requires_grad_(False)
    projection.to(device=reference.device, dtype=reference.dtype).requires_grad_(False)

    if getattr(model, STOCK_ATTRIBUTE, None) is None:
        object.__setattr__(model, STOCK_ATTRIBUTE, (clip.text_model, clip.text_projection, clip.config.text_config))
    clip.text_model, clip.text_projection = text_model, projection
    clip.config.text_config = seg_config
    clip.text_embed_dim = seg_config.hidden_size


def restore(model):
    """Put CLIPSeg's stock text tower and projection back; return ``model``."""
    stock = getattr(model, STOCK_ATTRIBUTE, None)
    if stock is None:
        raise ValueError(f"{type(model).__name__} has no swapped text tower to restore")
    clip = _clip_part(model)
    clip.text_model, clip.text_projection, clip.config.text_config = stock
    clip.text_embed_dim = clip.config.text_config.hidden_size
    object.__setattr__(model, STOCK_ATTRIBUTE, None)
    return model


def processor_for(model, processor_or_tokenizer):
    """A ``CLIPSegProcessor``: the given one, or one made from a tokenizer and the model's image size."""
    from transformers import CLIPSegProcessor, ViTImageProcessor

    if isinstance(processor_or_tokenizer, CLIPSegProcessor):
        return processor_or_tokenizer
    size = _clip_part(model).config.vision_config.image_size
    image_processor = ViTImageProcessor(
        do_resize=True, size={"height": size, "width": size}, image_mean=OPENAI_MEAN, image_std=OPENAI_STD
    )
    return CLIPSegProcessor(image_processor=image_processor, tokenizer=processor_or_tokenizer)


@torch.no_grad()
def conditional_embeddings(model, processor_or_tokenizer, phrases: Sequence[str]) -> torch.Tensor:
    """The pooled, projected text embeddings CLIPSeg's decoder is conditioned on, one row per phrase."""
    tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    inputs = tokenizer(list(phrases), padding="max_length", truncation=True, return_tensors="pt")
    clip = _clip_part(model)
    device = next(clip.parameters()).device
    return clip.get_text_features(
        input_ids=inputs.input_ids.to(device), attention_mask=inputs.attention_mask.to(device)
    ).pooler_output


@torch.no_grad()
def segment(model, processor_or_tokenizer, image, phrase: str) -> torch.Tensor:
    """Probability mask (H, W) of ``phrase`` in a PIL ``image``, at the image's size."""
    processor = processor_for(model, processor_or_tokenizer)
    inputs = processor(text=[phrase], images=[image], padding="max_length", truncation=True, return_tensors="pt")
    device = next(model.parameters()).device
    logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits
    logits = logits.reshape(-1, *logits.shape[-2:])[:1, None].float()
    width, height = image.size
    resized = torch.nn.functional.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    return resized[0, 0].sigmoid().cpu()


def miou(predicted: Sequence, ground_truth: Sequence, threshold: float = 0.5) -> float:
    """Mean IoU of binary masks; probability masks are thresholded. Two empty masks count as IoU 1."""
    if len(predicted) != len(ground_truth):
        raise ValueError(f"miou: {len(predicted)} predicted masks but {len(ground_truth)} ground-truth masks")
    if not len(predicted):
        raise ValueError("miou: no masks to score")
    scores = []
    for index, (pred, truth) in enumerate(zip(predicted, ground_truth)):
        pred, truth = _binary(pred, threshold), _binary(truth, 0.5)
        if pred.shape != truth.shape:
            raise ValueError(f"miou: mask {index} is {pred.shape} but its ground truth is {truth.shape}")
        union = np.logical_or(pred, truth).sum()
        scores.append(1.0 if union == 0 else float(np.logical_and(pred, truth).sum() / union))
    return float(np.mean(scores))


def _binary(mask, threshold: float) -> np.ndarray:
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return array > threshold if array.dtype != bool else array


@hookimpl
def register_integrations(register):
    register(ClipSegIntegration())
