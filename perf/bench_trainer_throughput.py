"""Trainer throughput vs a bare PyTorch loop on the same model and batch size; cached vs uncached image features.

    python perf/bench_trainer_throughput.py --steps 60 --threads 2
    python perf/bench_trainer_throughput.py --profile full --steps 150   # where the trainer's extra time goes

The bare loop is the least a training step can do: one fixed, pre-tokenized batch, precomputed image features,
encode_text -> objective -> backward -> clip grad norm -> AdamW step (the same math as the trainer's step). The trainer does everything it really does (draw the batch,
tokenize, accelerate's accumulate/autocast/clip, logit-scale clamp, metrics line) with the same model, objectives,
tuning and batch size. Goal: trainer >= 0.95x the bare loop. Each figure is the best of --repeats runs (the machine
is shared, so the best run is the one least disturbed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def setup(workdir: Path, n_images: int, seed: int):
    from negation_plugins.testing import tiny_model_dir
    from negation_plugins.world import WorldConfig, make_world
    from negation_plugins.world.export import WorldFiles
    from trainers.demo import negation_records
    from trainers.pretrain_world import PretrainConfig

    world_dir = workdir / "world"
    world = (
        WorldFiles.at(world_dir)
        if (world_dir / "world.json").is_file()
        else make_world(world_dir, WorldConfig(n_images=n_images, seed=seed), progress=False)
    )
    model_dir = workdir / "model"
    if not (model_dir / "open_clip_config.json").is_file():
        tiny_model_dir(model_dir, seed, model_cfg=PretrainConfig(seed=seed).model_cfg(32))
    records = workdir / "records.jsonl"
    if not records.is_file():
        negation_records(world, records, seed=seed, progress=False)
    return world, f"local-dir:{model_dir}", records


def trainer_steps_per_second(spec, records, world, workdir, steps, batch_size, tuning, objectives, cache) -> float:
    from trainers.config import build_config
    from trainers.finetune import train

    config = build_config(
        "world",
        model=spec,
        train=str(records),
        images=str(world.images),
        output=str(workdir / "run"),
        objective=objectives,
        tuning=tuning,
        max_steps=steps,
        batch_size=batch_size,
        val_fraction=0.0,
        eval_every=10**9,
        progress=False,
        log_with="none",
        cache_image_features=cache,
        feature_store=str(workdir / "feature-store"),
        export_transformers=False,
        warmup_steps=1,
    )
    summary = train(config)
    return summary["steps"] / summary["train_seconds"]


def bare_steps_per_second(spec, records, world, steps, batch_size, tuning, objectives) -> float:
    """The same model/objectives/batch size in a plain loop over one fixed batch."""
    import random

    from negation_plugins import load_clip
    from negation_plugins.losses import parse_objectives
    from trainers.batches import build_texts, load_examples, usable_examples
    from trainers.config import build_config
    from trainers.features import embed_files
    from trainers.finetune import split_text_features
    from trainers.optim import adamw
    from trainers.tuning import apply_tuning, open_clip_model

    objective = parse_objectives(objectives)
    bundle = load_clip(spec)
    examples, _ = usable_examples(load_examples(str(records), "records", None, None), objective.requires, "bench")
    chunk = examples[:batch_size]
    model, _ = apply_tuning(bundle.model, tuning)
    clip = open_clip_model(model)
    image = embed_files(clip, bundle.preprocess, [Path(world.images) / e.image for e in chunk], workers=0)
    texts, answers = build_texts(chunk, objective.requires, random.Random(0), examples)
    tokens = bundle.tokenizer([t for key in texts for t in texts[key]])
    world_recipe = build_config("world")
    optimizer = adamw(model, world_recipe.lr, world_recipe.weight_decay)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        features = clip.encode_text(tokens, normalize=True)
        batch = {"image": image, "logit_scale": clip.logit_scale.exp()}
        batch.update(split_text_features(features, [(k, len(v)) for k, v in texts.items()], answers, len(chunk)))
        loss, _ = objective(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the trainer's default --grad-clip
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps / (time.perf_counter() - start)


def profile_trainer(spec, records, world, workdir, args, objectives) -> int:
    """Where a trainer step's time goes beyond the bare loop's work (tokenizing, batch drawing, bookkeeping)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    rate = trainer_steps_per_second(
        spec, records, world, workdir, args.steps, args.batch_size, args.profile, objectives, True
    )
    profiler.disable()
    print(f"[{args.profile}] trainer under cProfile: {rate:.2f} steps/s over {args.steps} steps")
    stats = pstats.Stats(profiler)
    tokenize = sum(
        v[3] for k, v in stats.stats.items() if k[0].endswith("open_clip/tokenizer.py") and k[2] == "__call__"
    )
    print(f"tokenizing (open_clip tokenizer __call__, cumulative): {1000 * tokenize / args.steps:.2f} ms per step")
    stats.sort_stats("tottime").print_stats(15)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/negclip-bench-trainer")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument(
        "--profile",
        choices=("lora", "full"),
        default=None,
        help="instead: one trainer run of --steps under cProfile, top functions by own time",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from trainers.config import DEFAULT_OBJECTIVES

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    world, spec, records = setup(workdir, args.images, 0)
    objectives = list(DEFAULT_OBJECTIVES)
    if args.profile:
        return profile_trainer(spec, records, world, workdir, args, objectives)
    print(
        f"model: world-size CLIP (text width 64, 2 layers), batch {args.batch_size}, objectives "
        f"{'+'.join(objectives)}, {args.steps} steps, {args.threads} threads, best of {args.repeats}"
    )
    for tuning in ("lora", "full"):
        bare = max(
            bare_steps_per_second(spec, records, world, args.steps, args.batch_size, tuning, objectives)
            for _ in range(args.repeats)
        )
        cached = max(
            trainer_steps_per_second(
                spec, records, world, workdir, args.steps, args.batch_size, tuning, objectives, True
            )
            for _ in range(args.repeats)
        )
        uncached = max(
            trainer_steps_per_second(
                spec, records, world, workdir, args.steps, args.batch_size, tuning, objectives, False
            )
            for _ in range(args.repeats)
        )
        print(f"[{tuning}] bare PyTorch loop:             {bare:7.2f} steps/s")
        print(f"[{tuning}] trainer, cached image features: {cached:7.2f} steps/s  ({cached / bare:.2f}x bare)")
        print(
            f"[{tuning}] trainer, images from disk:      {uncached:7.2f} steps/s  "
            f"(caching gains {cached / uncached:.2f}x)"
        )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
