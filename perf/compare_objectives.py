"""Compare objectives and tuning modes on the synthetic world; prints the README table.

    python perf/compare_objectives.py --workdir /tmp/compare --steps 1000

Same world, same base model (pretrained on affirmative captions, cached), same template-negation records and the
same number of steps for every row; scores on held-out scenes: NegBench-style MCQ accuracy (overall and per type)
and affirmative image->text Recall@1 relative to the base model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROWS = (
    # (label, objectives, tuning, learning rate): objectives on the default tuning and learning rate, then tuning
    # modes and learning rates on the default objectives.
    ("infonce (NegationCLIP), full", ["infonce"], "full", 3e-3),
    ("tng (TNG-CLIP), full", ["tng"], "full", 3e-3),
    ("omni (Omni-NegCLIP), full", ["omni"], "full", 3e-3),
    ("conclip + clip:0.5, full", ["conclip", "clip:0.5"], "full", 3e-3),
    ("omni + negbench-mcq + clip:0.5, full", ["omni", "negbench-mcq", "clip:0.5"], "full", 3e-3),
    ("negbench-mcq + clip:0.5, full (default)", ["negbench-mcq", "clip:0.5"], "full", 3e-3),
    ("negbench-mcq + clip:0.5, full, lr 1e-3", ["negbench-mcq", "clip:0.5"], "full", 1e-3),
    ("negbench-mcq + clip:0.5, LoRA lr 1e-2", ["negbench-mcq", "clip:0.5"], "lora", 1e-2),
    ("negbench-mcq + clip:0.5, LoRA lr 3e-2", ["negbench-mcq", "clip:0.5"], "lora", 3e-2),
    ("negbench-mcq + clip:0.5, front:0-0", ["negbench-mcq", "clip:0.5"], "front:0-0", 3e-3),
    ("omni, front:0-0 (paper's recipe)", ["omni"], "front:0-0", 3e-3),
    ("omni, LoRA lr 1e-2", ["omni"], "lora", 1e-2),
)


def prepare(workdir: Path, seed: int):
    """World + cached base model + records (built once, reused by every row)."""
    from negation_plugins.world import WorldConfig, make_world
    from negation_plugins.world.export import WorldFiles
    from trainers.demo import negation_records
    from trainers.pretrain_world import PretrainConfig, pretrain

    world_dir = workdir / "world"
    world = (
        WorldFiles.at(world_dir)
        if (world_dir / "world.json").is_file()
        else make_world(world_dir, WorldConfig(seed=seed), progress=False)
    )
    pretrain(world, workdir / "base_model", PretrainConfig(seed=seed), progress=False)
    records = workdir / "records.jsonl"
    if not records.is_file():
        negation_records(world, records, seed=seed, progress=False)
    return world, f"local-dir:{workdir / 'base_model'}", records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/negclip-compare")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, help="comma list of row numbers (1-based) to run")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from trainers.config import build_config
    from trainers.demo import evaluate_on_world
    from trainers.finetune import train

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    world, base, records = prepare(workdir, args.seed)
    base_scores = evaluate_on_world(base, world)
    rows = list(enumerate(ROWS, 1))
    if args.only:
        keep = {int(x) for x in args.only.split(",")}
        rows = [(i, row) for i, row in rows if i in keep]
    print(f"steps={args.steps} seed={args.seed}; held-out MCQ accuracy and affirmative image->text R@1 (x base)")
    header = f"| {'objective / tuning':<40} | lr     | overall | affirm. | negation | hybrid | R@1 x base | s/step |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    _print_row("base model (no fine-tuning)", None, base_scores, base_scores, None)
    results = {"base": base_scores, "rows": {}}
    for number, (label, objectives, tuning, lr) in rows:
        out = workdir / f"run-{number}"
        config = build_config(
            "world",
            model=base,
            train=str(records),
            images=str(world.images),
            output=str(out),
            objective=objectives,
            tuning=tuning,
            lr=lr,
            max_steps=args.steps,
            seed=args.seed,
            eval_every=args.steps,
            val_fraction=0.05,
            progress=False,
            log_with="none",
            export_transformers=False,
        )
        started = time.perf_counter()
        summary = train(config)
        seconds = time.perf_counter() - started
        scores = evaluate_on_world(f"local-dir:{out}", world)
        _print_row(label, lr, scores, base_scores, summary["train_seconds"] / args.steps)
        results["rows"][label] = {
            "scores": scores,
            "tuning": tuning,
            "objectives": objectives,
            "lr": lr,
            "wall_seconds": round(seconds, 1),
        }
        sys.stdout.flush()
    (workdir / "compare_objectives.json").write_text(json.dumps(results, indent=1))
    return 0


def _print_row(label, lr, scores, base, seconds_per_step):
    mcq = scores["mcq"]
    ratio = scores["retrieval"]["i2t_R@1"] / max(base["retrieval"]["i2t_R@1"], 1e-9)
    step = "-" if seconds_per_step is None else f"{seconds_per_step:.3f}"
    rate = "-" if lr is None else f"{lr:.0e}"
    print(
        f"| {label:<40} | {rate:<6} | {mcq['accuracy']:.3f}   | {mcq['affirmation']:.3f}   | {mcq['negation']:.3f}    "
        f"| {mcq['hybrid']:.3f}  | {ratio:.3f}      | {step:>6} |"
    )


if __name__ == "__main__":
    sys.exit(main())
