"""Pretrain the world's base model: a tiny open_clip CLIP trained from scratch on affirmative captions (and rare
web negations).

    negclip world pretrain --world WORLD --out MODEL

It stands in for the web-pretrained CLIPs of the papers: good at "what is in the picture", nearly blind to "no". Like
web data, its captions negate rarely (``web_negation_share``, 2 % of caption draws, every phrasing family): so, like a
real CLIP, it has seen every negation cue word a few times without learning to read negation. Saved as a local
open_clip folder (``open_clip_config.json`` + ``open_clip_model.safetensors``) that
``open_clip.create_model_and_transforms("local-dir:PATH")`` and ``negation_plugins.load_clip`` both load.
A finished run is cached under ``~/.cache/negation-plugins/world-<hash>`` (hash of the world and the config), so
re-runs with the same seed reuse it; without the cache the same seed gives the same weights on the same machine.
Each world's default model ships with the package (:mod:`negation_plugins.world.shipped`) and is used first.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from negation_plugins.atomic import atomic_folder, atomic_write_json
from negation_plugins.benchmarks.common import load_rgb, read_coco_pairs
from negation_plugins.benchmarks.retention import CocoRetrieval
from negation_plugins.convert import save_open_clip
from negation_plugins.data.io import read_coco_instances
from negation_plugins.factory import ClipBundle
from negation_plugins.phrasings import fields
from negation_plugins.world.captions import join_list
from negation_plugins.world.export import WorldFiles
from negation_plugins.world.kinds import DEFAULT_WORLD, world_kind
from negation_plugins.world.shipped import shipped_model

from .optim import adamw, warmup_cosine

logger = logging.getLogger(__name__)

RESULT_NAME = "pretrain_result.json"  # written last: a folder with it is a finished run


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 3000
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    seed: int = 0
    embed_dim: int = 64
    vision_width: int = 64
    vision_layers: int = 2
    patch_size: int = 16  # one patch per grid cell: a linear patch embedding already sees a whole object
    text_width: int = 64
    text_layers: int = 2
    context_length: int = 32
    # Share of caption draws that are a "web negation": a true caption negating an absent object, phrased in any
    # family of negation_plugins.phrasings (train and held-out). Web captions rarely negate, but they do, so a
    # web-pretrained CLIP has seen every negation cue word a few times: what "lacking" means is weakly in its
    # embeddings, and fine-tuning on some cues can carry over to others. 0 gives a model that has never seen a cue.
    web_negation_share: float = 0.02

    def model_cfg(self, image_size: int) -> dict:
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {
                "image_size": image_size,
                "layers": self.vision_layers,
                "width": self.vision_width,
                "patch_size": self.patch_size,
                "head_width": 32,
            },
            "text_cfg": {
                "context_length": self.context_length,
                "vocab_size": 49408,
                "width": self.text_width,
                "heads": self.text_width // 32,
                "layers": self.text_layers,
            },
        }


def default_cache_dir() -> Path:
    return Path(os.environ.get("NEGATION_PLUGINS_CACHE", Path.home() / ".cache" / "negation-plugins"))


def cache_key(world: WorldFiles, config: PretrainConfig) -> str:
    """Same world settings + same training config -> same key (the run is deterministic in them)."""
    settings = json.loads((world.root / "world.json").read_text())["config"]
    if settings.get("kind") == DEFAULT_WORLD:  # worlds written before there were kinds: the shipped model's key
        settings = {k: v for k, v in settings.items() if k != "kind"}
    blob = json.dumps({"world": settings, "pretrain": asdict(config), "version": 5}, sort_keys=True)
    return "world-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def pretrain(
    world: WorldFiles | str | os.PathLike,
    out: str | os.PathLike,
    config: PretrainConfig = PretrainConfig(),
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> dict:
    """Train (or fetch from the cache) the base model into ``out``; returns the result dict (also in ``out``)."""
    world = world if isinstance(world, WorldFiles) else WorldFiles.at(world)
    out = Path(out)
    key = cache_key(world, config)
    cached = Path(cache_dir or default_cache_dir()) / key
    shipped = shipped_model(key, kind=world.kind) if use_cache else None
    earlier = {p.name: p for p in cached.iterdir() if p.is_file()} if (cached / RESULT_NAME).is_file() else None
    for files in (shipped, earlier if use_cache else None):
        if files is None:
            continue
        logger.info("reusing the %s world model %s", "shipped" if files is shipped else "cached", files[RESULT_NAME])
        if files[RESULT_NAME].parent.resolve() != out.resolve() and not holds_copy(out, files):
            copy_files(files, out)
        result = json.loads((out / RESULT_NAME).read_text())
        return {**result, "cached": True, "shipped": files is shipped}

    result = _train_and_save(world, out, config, progress)
    if use_cache and cached.resolve() != out.resolve():
        atomic_folder(cached, lambda tmp: shutil.copytree(out, tmp, dirs_exist_ok=True))
    return {**result, "cached": False, "shipped": False}


def _train_and_save(world: WorldFiles, out: Path, config: PretrainConfig, progress: bool) -> dict:
    start = time.perf_counter()
    image_size = json.loads((world.root / "world.json").read_text())["config"]["image_size"]
    torch.manual_seed(config.seed)
    model_cfg = config.model_cfg(image_size)
    model = open_clip.CLIP(**model_cfg)
    preprocess = open_clip.image_transform(image_size, is_train=False)
    tokenizer = open_clip.SimpleTokenizer(context_length=config.context_length)

    images, captions = load_split(world.captions, world.images, preprocess)
    tokens = [tokenizer(c) for c in captions]
    negations = web_negations(world, config.seed) if config.web_negation_share > 0 else None
    web_tokens = tokenizer(negations) if negations else None
    train_loop(model, images, tokens, config, progress, web_tokens)

    recall = retrieval_r1(model, tokenizer, preprocess, world)
    result = {
        "i2t_R@1": recall["i2t_R@1"],
        "t2i_R@1": recall["t2i_R@1"],
        "n_val_scenes": recall["n_images"],
        "n_train_scenes": len(images),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "config": asdict(config),
    }
    logger.info(
        "world model: val R@1 image->text %.3f text->image %.3f (%d scenes)",
        result["i2t_R@1"],
        result["t2i_R@1"],
        result["n_val_scenes"],
    )
    bundle = ClipBundle(model, tokenizer, preprocess, spec="world-pretrain", info={"model_cfg": model_cfg})
    save_open_clip(bundle, out, overwrite=True)
    atomic_write_json(out / RESULT_NAME, result, indent=2)
    return result


def load_split(captions_json: Path, images_dir: Path, preprocess) -> tuple[torch.Tensor, list[list[str]]]:
    """Preprocessed image tensor (N, 3, H, W) and each image's captions, in the COCO file's image order."""
    pairs, _ = read_coco_pairs(captions_json, images_dir)
    if not pairs:
        raise ValueError(f"{captions_json}: no images with captions")
    pixels = [preprocess(load_rgb(path)) for path, _ in pairs]
    return torch.stack(pixels), [captions for _, captions in pairs]


def web_negations(world: WorldFiles, seed: int) -> list[str]:
    """One true negating caption per training image, in the captions file's image order: some of what the image
    shows, then an object it does not show negated in a phrasing family drawn from all the world uses."""
    present, categories = read_coco_instances(world.instances)
    files = {entry["file_name"]: entry["id"] for entry in json.loads(world.instances.read_text())["images"]}
    pairs, _ = read_coco_pairs(world.captions, world.images)
    rng = random.Random(f"{seed}-web-negations")
    phrasings = world_kind(world.kind).web_phrasings
    captions = []
    for path, _ in pairs:
        shown = list(present[files[path.name]])
        absent = [c for c in categories if c not in shown]
        rng.shuffle(shown)
        negated, second = rng.sample(absent, 2)
        template = rng.choice(rng.choice(phrasings).hybrid)
        captions.append(template.format(c=join_list(shown[: rng.randint(1, len(shown))]), **fields(negated, second)))
    return captions


def train_loop(
    model: open_clip.CLIP,
    images: torch.Tensor,
    tokens: list[torch.Tensor],
    config: PretrainConfig,
    progress: bool,
    web_tokens: torch.Tensor | None = None,
) -> None:
    """Symmetric InfoNCE, each image paired with one of its captions drawn at random each step (its web negation,
    row i of ``web_tokens``, with probability ``config.web_negation_share``)."""
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = adamw(model, config.lr, config.weight_decay)
    schedule = warmup_cosine(optimizer, config.warmup_steps, config.steps)
    batch_size = min(config.batch_size, len(images))
    order, cursor = torch.randperm(len(images), generator=generator), 0
    model.train()
    bar = tqdm(range(config.steps), desc="pretraining world model", disable=not progress)
    for _ in bar:
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(images), generator=generator), 0
        batch = order[cursor : cursor + batch_size]
        cursor += batch_size
        picks = [int(torch.randint(len(tokens[i]), (1,), generator=generator)) for i in batch.tolist()]
        text = torch.stack([tokens[i][k] for i, k in zip(batch.tolist(), picks)])
        if web_tokens is not None:
            web = torch.rand(len(batch), generator=generator) < config.web_negation_share
            text[web] = web_tokens[batch[web]]
        image_features, text_features, logit_scale = model(images[batch], text)
        logits = logit_scale * image_features @ text_features.T
        labels = torch.arange(len(batch))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()


def retrieval_r1(model, tokenizer, preprocess, world: WorldFiles) -> dict:
    """The world's affirmative retrieval: the ``coco-retrieval`` benchmark on the held-out scenes (all their
    captions), the same figure ``negclip eval --bench coco-retrieval`` and ``negclip demo`` report."""
    clip = ClipBundle(model, tokenizer, preprocess, spec="world-pretrain")
    return CocoRetrieval().run(clip, captions=world.val_captions, images=world.images, ks=(1,), progress=False)


def holds_copy(target: Path, files: dict[str, Path]) -> bool:
    """Whether ``target`` already has each of ``files`` (name -> source file), byte for byte. Then nothing is
    copied: jobs that share a work folder (two benchmark processes side by side) would otherwise swap it under each
    other. (A copy goes through ``atomic_folder``: readers see the old folder or the whole new one.)"""
    return bool(files) and all(
        (target / name).is_file() and filecmp.cmp(path, target / name, shallow=False) for name, path in files.items()
    )


def copy_files(files: dict[str, Path], target: Path) -> None:
    """Write ``target`` as a folder of exactly ``files`` (name -> source file); readers see the old or the new one."""
    atomic_folder(target, lambda tmp: [shutil.copyfile(path, tmp / name) for name, path in files.items()])
