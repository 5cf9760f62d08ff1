"""Tiny real models shared by the integration tests: open_clip CLIPs and diffusers pipelines from configs."""

from __future__ import annotations

import functools

import open_clip
import pytest
import torch

from negation_plugins import ClipBundle

PROMPTS = ["a street without cars", "a dog, not a cat"]


@functools.lru_cache(maxsize=1)
def tokenizer():
    from negation_plugins.tokenizer import clip_tokenizer

    return clip_tokenizer()


def tiny_clip(text_width: int = 64, embed_dim: int = 32, layers: int = 1, seed: int = 0) -> ClipBundle:
    """A real open_clip CLIP with random weights, text tower ``text_width`` wide (OpenAI quick_gelu)."""
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(
        embed_dim=embed_dim,
        vision_cfg={"layers": 1, "width": 32, "head_width": 16, "patch_size": 16, "image_size": 32},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": text_width, "heads": 2, "layers": layers},
        quick_gelu=True,
    ).eval()
    return ClipBundle(
        model=model, tokenizer=open_clip.get_tokenizer("ViT-B-32"), preprocess=None, spec=f"tiny-{text_width}-{seed}"
    )


def text_config(width: int, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        eos_token_id=49407,
        bos_token_id=49406,
        pad_token_id=49407,
        hidden_act="quick_gelu",
        projection_dim=projection_dim or width,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8,),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )


def tiny_sd_pipeline(cross_attention_dim: int = 64, seed: int = 0):
    """A real StableDiffusionPipeline from configs (stock encoder random, width = cross_attention_dim)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(text_config(cross_attention_dim)).eval(),
        tokenizer=tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler(clip_sample=False, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(width_1: int = 32, width_2: int = 48, projection_dim: int = 24, seed: int = 0):
    """A real StableDiffusionXLPipeline from configs: text_encoder width_1, text_encoder_2 width_2 (+ projection)."""
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=width_1 + width_2,
        attention_head_dim=2,
        norm_num_groups=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=projection_dim + 6 * time_dim,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(text_config(width_1)).eval(),
        text_encoder_2=CLIPTextModelWithProjection(text_config(width_2, projection_dim)).eval(),
        tokenizer=tokenizer(),
        tokenizer_2=tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(),
        force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def open_clip_tokens(bundle: ClipBundle, prompts) -> torch.Tensor:
    return bundle.tokenizer(list(prompts))


def open_clip_token_states(bundle: ClipBundle, prompts) -> torch.Tensor:
    """Per-token final states (after ln_final) of an open_clip text tower: what SD 1.x reads."""
    model = bundle.model
    with torch.no_grad():
        x = model.token_embedding(open_clip_tokens(bundle, prompts)) + model.positional_embedding
        x = model.transformer(x, attn_mask=model.attn_mask)
        return model.ln_final(x)


@pytest.fixture(scope="module")
def sd_pipe():
    return tiny_sd_pipeline()
