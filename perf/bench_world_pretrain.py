"""README figures for the world's base model: wall time, val retrieval R@1 (``coco-retrieval``) and MCQ accuracy per
type.

    .venv/bin/python perf/bench_world_pretrain.py [--n-images 2000] [--steps 3000] [--threads 2]

Always trains from scratch (no cache) so the wall time is real.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import negation_plugins as npl
from negation_plugins.benchmarks.mcq import run_mcq
from negation_plugins.testing import parse_bench_args
from negation_plugins.world import WorldConfig, make_world
from trainers.pretrain_world import PretrainConfig, pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-images", type=int, default=WorldConfig.n_images)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=PretrainConfig.steps)
    parser.add_argument("--out", default=None, help="keep the world and model here (default: a temp dir)")
    args = parse_bench_args(parser, threads=2)

    root = Path(args.out or tempfile.mkdtemp(prefix="bench-world-"))
    start = time.perf_counter()
    world = make_world(root / "world", WorldConfig(n_images=args.n_images, seed=args.seed))
    world_seconds = time.perf_counter() - start
    result = pretrain(world, root / "model", PretrainConfig(steps=args.steps, seed=args.seed), use_cache=False)
    clip = npl.load_clip(f"local-dir:{root / 'model'}")
    mcq = run_mcq(clip, world.mcq_csv, world.images)
    figures = {
        "threads": args.threads,
        "n_train_scenes": result["n_train_scenes"],
        "n_val_scenes": result["n_val_scenes"],
        "steps": args.steps,
        "world_make_seconds": round(world_seconds, 1),
        "pretrain_seconds": result["wall_seconds"],
        "val_i2t_R@1": result["i2t_R@1"],  # coco-retrieval on the held-out scenes, all their captions
        "val_t2i_R@1": result["t2i_R@1"],
        "mcq_val": {k: mcq[k] for k in ("accuracy", "affirmation", "negation", "hybrid", "n_items")},
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
