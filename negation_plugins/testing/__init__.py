"""Tiny real models built from configs (random weights, nothing downloaded), shared by the tests and the speed
scripts in ``perf/``, as diffusers keeps ``testing_utils``: open_clip CLIPs, an open_clip folder, SD/SDXL pipelines.

Imports diffusers/transformers only when a pipeline is built.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import open_clip
import torch

from ..factory import ClipBundle

# A tiny open_clip CLIP: 32 wide, one vision layer (one 8x8-patch grid over 32-pixel images), two text layers.
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 2},
}


def tiny_model_dir(out: str | Path, seed: int = 0, model_cfg: dict | None = None, **text_overrides) -> str:
    """A randomly initialised CLIP (``model_cfg``, default :data:`TINY_CFG` with ``text_overrides``) saved as an
    open_clip folder; returns its ``local-dir:`` spec."""
    from ..convert import save_open_clip

    cfg = json.loads(json.dumps(model_cfg or TINY_CFG))
    cfg["text_cfg"].update(text_overrides)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    bundle = ClipBundle(model, open_clip.get_tokenizer("ViT-B-32"), None, spec=f"tiny-{seed}", info={"model_cfg": cfg})
    save_open_clip(bundle, out, overwrite=True)
    return f"local-dir:{out}"


@functools.lru_cache(maxsize=1)
def tokenizer():
    """The real CLIP BPE tokenizer (transformers), built once."""
    from ..tokenizer import clip_tokenizer

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
    """A two-layer CLIP text config ``width`` wide; the rest is CLIP's (transformers' defaults: the BPE vocabulary
    and its start/end ids, 77 positions, quick_gelu), padding with the end id as the CLIP tokenizer does."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        pad_token_id=49407,
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


def _unet(cross_attention_dim: int, **sdxl_conditioning):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
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
        **sdxl_conditioning,
    )


def tiny_sd_pipeline(cross_attention_dim: int = 64, seed: int = 0):
    """A real StableDiffusionPipeline from configs (stock encoder random, width = cross_attention_dim)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = _unet(cross_attention_dim)
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
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    time_dim = 8
    unet = _unet(
        width_1 + width_2,
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


def tiny_owlvit(intermediate_size: int = 64, seed: int = 0):
    """A real OWL-ViT detector from configs (32 px images, 16-token queries) and its processor."""
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

    from ..tokenizer import clip_tokenizer

    torch.manual_seed(seed)
    tower = {
        "hidden_size": 32,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    config = OwlViTConfig(
        text_config={**tower, "max_position_embeddings": 16},
        vision_config={**tower, "image_size": 32, "patch_size": 16},
        projection_dim=32,
    )
    size = {"height": 32, "width": 32}
    image_processor = OwlViTImageProcessor(size=size, crop_size=size)
    processor = OwlViTProcessor(image_processor=image_processor, tokenizer=clip_tokenizer(context_length=16))
    return OwlViTForObjectDetection(config), processor


def parse_bench_args(parser, threads: int = 1):
    """A speed script's arguments with ``--threads`` added and applied (torch threads of this process): on a
    shared machine more threads than free cores spin-wait, and the figures measure that."""
    parser.add_argument("--threads", type=int, default=threads, help="torch threads of the main process")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def stop_generate_midway(args: list[str], out: Path, after_chunks: int, stop: int, cwd: Path | None = None) -> int:
    """Run ``negclip generate ARGS --out OUT`` in a child process, send it ``stop`` (a signal) once ``after_chunks``
    chunks are committed, and return how many were. For resume tests: the run must still be going when stopped."""
    import os
    import signal
    import subprocess
    import sys
    import time

    progress = out.with_name(out.name + ".progress.json")
    command = [
        sys.executable,
        "-c",
        "from negation_plugins.cli import cli; cli()",
        "generate",
        *args,
        "--out",
        str(out),
    ]
    root = str(Path(__file__).resolve().parents[2])  # this checkout first, as for the parent process
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    # A signal the test process ignores stays ignored across exec (an earlier test or launcher may ignore SIGINT):
    # give the child the default handling, or Ctrl-C would let it run to the end.
    process = subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if progress.exists() and json.loads(progress.read_text() or "{}").get("chunks_done", 0) >= after_chunks:
            break
        time.sleep(0.005)
    if process.poll() is not None:
        error = process.stderr.read().decode(errors="replace").strip().splitlines()[-3:]
        raise AssertionError(f"generation ended (exit {process.returncode}) before it could be stopped: {error}")
    process.send_signal(stop)
    process.wait(timeout=30)
    if not progress.exists():  # it committed its last chunk between the check and the signal
        raise AssertionError("generation finished before it could be stopped; give the run more to do")
    return json.loads(progress.read_text())["chunks_done"]
