"""Which data mix and objective weights teach negation that reaches UNSEEN phrasings? Prints one table.

    python perf/compare_phrasing.py --workdir /tmp/compare-phrasing --steps 300 --seeds 0,1,2

Same world, same base model (cached) for every row; each row's records come from the template negator with the
row's data mix (it writes only TRAIN phrasing families, see negation_plugins/phrasings.py), then the row's
objectives/tuning are trained for ``--steps`` steps per seed. Scores on held-out scenes, split by the phrasing
family of each negation/hybrid item: ``seen`` (train families) and ``held-out`` (families never in training data),
each with the affirmation items included; retrieval is image->text R@1 relative to the base model. Cells are the
mean over seeds, with the spread (max - min) when there are several.

The goal (issue 15): held-out overall >= 0.90, negation and hybrid >= 0.85, affirmation within 0.02 of the base,
R@1 >= 0.98x, LoRA within 0.03 of full.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

# (label, negator options (data mix), objectives, tuning, lr, extra TrainConfig settings)
ROWS = (
    ("mcq + clip:0.5, full (old default)", {}, ["negbench-mcq", "clip:0.5"], "full", 3e-3, {}),
    ("mcq + clip:1.0, full", {}, ["negbench-mcq", "clip:1.0"], "full", 3e-3, {}),
    ("mcq + clip:2.0, full", {}, ["negbench-mcq", "clip:2.0"], "full", 3e-3, {}),
    ("mcq + clip:1.0, full, lr 1e-3", {}, ["negbench-mcq", "clip:1.0"], "full", 1e-3, {}),
    ("mcq + omni + clip:1.0, full", {}, ["negbench-mcq", "omni", "clip:1.0"], "full", 3e-3, {}),
    (
        "mcq + clip:1.0, full, only-share 0.5",
        {"negation_only_share": 0.5},
        ["negbench-mcq", "clip:1.0"],
        "full",
        3e-3,
        {},
    ),
    (
        "mcq + clip:1.0, full, only-share 0.1",
        {"negation_only_share": 0.1},
        ["negbench-mcq", "clip:1.0"],
        "full",
        3e-3,
        {},
    ),
    ("mcq + clip:1.0, LoRA r16 lr 1e-2", {}, ["negbench-mcq", "clip:1.0"], "lora", 1e-2, {}),
    (
        "mcq + clip:1.0, LoRA r32 lr 1e-2",
        {},
        ["negbench-mcq", "clip:1.0"],
        "lora",
        1e-2,
        {"lora_rank": 32, "lora_alpha": 64.0},
    ),
    ("mcq + clip:1.0, LoRA r16 lr 3e-2", {}, ["negbench-mcq", "clip:1.0"], "lora", 3e-2, {}),
)


def prepare_base(workdir: Path, seed: int, pretrain_steps: int | None):
    """World + base model (the package's shipped one when the settings match, else pretrained and cached)."""
    from negation_plugins.world import WorldConfig, make_world
    from negation_plugins.world.export import WorldFiles
    from trainers.pretrain_world import PretrainConfig, pretrain

    world_dir = workdir / "world"
    world = (
        WorldFiles.at(world_dir)
        if (world_dir / "world.json").is_file()
        else make_world(world_dir, WorldConfig(seed=seed), progress=False)
    )
    config = PretrainConfig(seed=seed) if pretrain_steps is None else PretrainConfig(seed=seed, steps=pretrain_steps)
    pretrain(world, workdir / "base_model", config, progress=False)
    return world, f"local-dir:{workdir / 'base_model'}"


def records_for(workdir: Path, world, mix: dict, seed: int) -> Path:
    """Template-negation records (absence + presence) with the negator options ``mix``, cached per mix and seed."""
    from negation_plugins import plugins
    from negation_plugins.data.generate import generate
    from negation_plugins.data.io import read_coco_captions

    name = "-".join(f"{k}={v}" for k, v in sorted(mix.items())) or "default"
    path = workdir / f"records-{name}-seed{seed}.jsonl"
    if not path.is_file():
        captions = read_coco_captions(world.captions, world.instances, world.images)
        generate(
            captions,
            path,
            plugins.get_one("negators", "template")(**mix),
            plugins.get_one("verifiers", "annotations")(images=str(world.images)),
            ("absence", "presence"),
            captions.categories,
            seed=seed,
            overwrite=True,
            progress=False,
        )
    return path


def figures(scores: dict, base: dict) -> dict:
    """Flat figures of one evaluation: affirmation (no phrasing), seen/held-out MCQ, the retrieval ratio."""
    splits = scores["mcq"]["by_phrasing_split"]
    out = {"affirmation": scores["mcq"]["affirmation"]}
    for split, name in (("train", "seen"), ("held-out", "held-out")):
        for column in ("overall", "negation", "hybrid"):
            out[f"{name} {column}"] = splits[split]["accuracy" if column == "overall" else column]
    out["R@1 x base"] = scores["retrieval"]["i2t_R@1"] / max(base["retrieval"]["i2t_R@1"], 1e-9)
    return out


def cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f}±{(max(values) - min(values)) / 2:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/negclip-compare-phrasing")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", default="0", help="comma list of fine-tuning seeds (world and base: seed 0)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--only", default=None, help="comma list of row numbers (1-based) to run")
    parser.add_argument(
        "--pretrain-steps", type=int, default=None, help="base model steps [default: the shipped model's 3000]"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: on a loaded machine 2 threads spin-wait, ~8x slower)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from trainers.config import TrainConfig
    from trainers.demo import evaluate_on_world as evaluate
    from trainers.finetune import train

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    world, base = prepare_base(workdir, 0, args.pretrain_steps)
    base_figures = figures(base_scores := evaluate(base, world), base_scores)
    rows = list(enumerate(ROWS, 1))
    if args.only:
        keep = {int(x) for x in args.only.split(",")}
        rows = [(i, row) for i, row in rows if i in keep]
    names = list(base_figures)
    print(f"steps={args.steps} batch={args.batch_size} seeds={seeds}; held-out scenes, MCQ by phrasing split")
    header = f"| {'data mix / objectives / tuning':<40} | " + " | ".join(names) + " | s/run |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    print(f"| {'base model (no fine-tuning)':<40} | " + " | ".join(cell([base_figures[n]]) for n in names) + " | - |")
    results = {"base": base_scores, "rows": {}}
    for number, (label, mix, objectives, tuning, lr, extra) in rows:
        runs = []
        for seed in seeds:
            out = workdir / f"run-{number}-seed{seed}"
            config = TrainConfig(
                model=base,
                train=str(records_for(workdir, world, mix, seed)),
                images=str(world.images),
                output=str(out),
                objective=objectives,
                tuning=tuning,
                lr=lr,
                max_steps=args.steps,
                batch_size=args.batch_size,
                seed=seed,
                eval_every=args.steps,
                val_fraction=0.05,
                progress=False,
                log_with="none",
                export_transformers=False,
                **extra,
            )
            started = time.perf_counter()
            train(config)
            scores = evaluate(f"local-dir:{out}", world)
            runs.append({"figures": figures(scores, base_scores), "seconds": time.perf_counter() - started})
        seconds = statistics.fmean(r["seconds"] for r in runs)
        print(
            f"| {label:<40} | "
            + " | ".join(cell([r["figures"][n] for r in runs]) for n in names)
            + f" | {seconds:.0f} |"
        )
        sys.stdout.flush()
        results["rows"][label] = {"runs": runs, "mix": mix, "objectives": objectives, "tuning": tuning, "lr": lr}
    # rows of earlier runs in the same workdir (e.g. with --only) are kept
    path = workdir / "compare_phrasing.json"
    earlier = json.loads(path.read_text())["rows"] if path.is_file() else {}
    path.write_text(json.dumps({**results, "rows": {**earlier, **results["rows"]}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
