"""Which objectives, data mix and tuning teach negation that reaches UNSEEN phrasings? Prints one table.

    python perf/compare_training.py --workdir /tmp/compare --seeds 0,1,2 --only 1,2
    python perf/compare_training.py --workdir /tmp/compare --only 3,4,5,6,7 --correction span-subtraction:scale=0.3

Same world, same base model (the package's shipped one) for every row. Each row starts from ``--recipe world`` and
changes what its settings say: the template negator's options (the data mix: it writes only TRAIN phrasing
families, see negation_plugins/phrasings.py) and trainer settings (objectives and weights, tuning, learning rate,
the share of affirmation questions in the MCQ loss, frozen parameters). Scores on the world's held-out scenes, MCQ
split by the phrasing family of each negation/hybrid item: ``seen`` (train families) and ``held-out`` (families
never in training data), each with the affirmation items included; "R@1 x base" is affirmative image->text R@1
relative to the base model. Cells are the mean over seeds with half the spread (max - min) when there are several.
``--correction SPEC`` (repeatable) adds a row under the base model and under each trained row: the same model with
that training-free correction (negation_plugins/corrections.py) applied at encode time. ``steering:fit`` fits a
steering direction on each model itself (its row's training records as pairs; the file lands beside the model), as
``negclip corrections fit MODEL --pairs RECORDS`` would. ``--reuse`` scores an earlier run of the same row, seed and
settings in the workdir instead of training it again (to add corrections to a measured table).

Without ``--steps`` each row trains for its own epochs (the world recipe's 15 = 2004 steps; the demo's row 38 = 668).

The goal (issue 15): held-out overall >= 0.90, negation and hybrid >= 0.85, affirmation within 0.02 of the base,
R@1 >= 0.98x, LoRA within 0.03 of full.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from negation_plugins.phrasings import families
from trainers.recipes import RECIPES

# (label, template negator options, trainer settings over --recipe world). Rows 1, 2 and 8-15 set the objectives the
# world recipe had before row 16 (negbench-mcq + clip:1.0), rows 1-27 its MCQ without scope swaps (before row 28),
# and rows 1-35 the negator's 13 train families before the breadth families (row 36), so their README figures stay
# reproducible by number.
STEERING_FIT = "steering:fit"
MCQ_CLIP = {"objective": ["negbench-mcq", "clip:1.0"]}
LORA = {"tuning": "lora", "lr": 1e-2}
BEFORE_SCOPE_SWAPS = {"mcq_scope_swap": False}
SCOPE_SWAPS = {"mcq_scope_swap": True}  # as the world recipe has them since row 28, spelled out per row
# the train families of the synthetic world itself: all the negator wrote before the breadth families
BEFORE_BREADTH = {"families": ",".join(p.family for p in families("train", in_world=True))}
ROWS_BEFORE_SCOPE_SWAPS = (
    ("mcq + clip:1.0, full tuning, lr 3e-3", {}, MCQ_CLIP),
    ("mcq + clip:1.0, LoRA r16 lr 1e-2", {}, {**MCQ_CLIP, **LORA}),
    # the papers' objectives on the world recipe's settings
    ("infonce (NegationCLIP)", {}, {"objective": ["infonce"]}),
    ("tng (TNG-CLIP)", {}, {"objective": ["tng"]}),
    ("omni (Omni-NegCLIP)", {}, {"objective": ["omni"]}),
    ("conclip + clip:0.5 (CoN-CLIP)", {}, {"objective": ["conclip", "clip:0.5"]}),
    ("omni, front:0-0 (Omni-NegCLIP's recipe)", {}, {"objective": ["omni"], "tuning": "front:0-0"}),
    # data mix, weights and LoRA settings around mcq + clip:1.0
    ("mcq + clip:0.5", {}, {"objective": ["negbench-mcq", "clip:0.5"]}),
    ("mcq + clip:1.0, affirmation questions 0.33", {}, {**MCQ_CLIP, "mcq_affirmation_share": 0.33}),
    ("mcq + clip:1.0, token embeddings frozen", {}, {**MCQ_CLIP, "freeze": "token_embedding"}),
    ("mcq + clip:1.0, negation-only share 0.5", {"negation_only_share": 0.5}, MCQ_CLIP),
    ("mcq + clip:1.0, LoRA r32 lr 1e-2", {}, {**MCQ_CLIP, **LORA, "lora_rank": 32, "lora_alpha": 64.0}),
    ("mcq + clip:1.0, LoRA r16 lr 2e-2", {}, {**MCQ_CLIP, **LORA, "lr": 2e-2}),
    ("mcq + clip:1.0, LoRA r16 lr 1e-2, 5 epochs", {}, {**MCQ_CLIP, **LORA, "epochs": 5.0}),
    ("mcq + clip:1.0, LoRA r16 lr 1e-2, 30 epochs", {}, {**MCQ_CLIP, **LORA, "epochs": 30.0}),
    # the world recipe since row 16: mcq + conclip + clip:1.0, full tuning, lr 3e-3, 15 epochs
    ("world recipe: mcq + conclip + clip:1.0, full", {}, {}),
    ("world recipe, conclip:2.0", {}, {"objective": ["negbench-mcq", "conclip:2.0", "clip:1.0"]}),
    ("world recipe, LoRA r16 lr 1e-2", {}, LORA),
    ("world recipe, 25 epochs", {}, {"epochs": 25.0}),
    ("world recipe, LoRA r16 lr 1e-2, 30 epochs", {}, {**LORA, "epochs": 30.0}),
    ("world recipe, token embeddings frozen", {}, {"freeze": "token_embedding"}),
    ("world recipe, negation-only share 0.5", {"negation_only_share": 0.5}, {}),
    ("world recipe, 5 epochs", {}, {"epochs": 5.0}),
    ("world recipe, LoRA r16 lr 1e-2, 5 epochs", {}, {**LORA, "epochs": 5.0}),
    ("world recipe, token and positional embeddings frozen", {}, {"freeze": "token_embedding,positional_embedding"}),
    ("world recipe, LoRA r16 lr 1e-2, 30 epochs, clip:2.0 (--recipe world-lora)", {}, RECIPES["world-lora"].values()),
    ("world-lora recipe, 45 epochs", {}, {**RECIPES["world-lora"].values(), "epochs": 45.0}),
)
ROWS_BEFORE_BREADTH = (
    *((label, mix, {**BEFORE_SCOPE_SWAPS, **settings}) for label, mix, settings in ROWS_BEFORE_SCOPE_SWAPS),
    ("world recipe with MCQ scope swaps (--recipe world)", {}, SCOPE_SWAPS),
    ("world-lora recipe with MCQ scope swaps", {}, {**RECIPES["world-lora"].values(), **SCOPE_SWAPS}),
    (
        "world recipe, MCQ scope swaps, clip:2.0",
        {},
        {**SCOPE_SWAPS, "objective": ["negbench-mcq", "conclip", "clip:2.0"]},
    ),
    (
        "world recipe, MCQ scope swaps, token and positional embeddings frozen",
        {},
        {**SCOPE_SWAPS, "freeze": "token_embedding,positional_embedding"},
    ),
    ("world recipe, MCQ scope swaps, 5 epochs (the demo)", {}, {**SCOPE_SWAPS, "epochs": 5.0}),
    ("world recipe, MCQ scope swaps, 25 epochs", {}, {**SCOPE_SWAPS, "epochs": 25.0}),
    (
        "world recipe, MCQ scope swaps, negbench-mcq:2.0",
        {},
        {**SCOPE_SWAPS, "objective": ["negbench-mcq:2.0", "conclip", "clip:1.0"]},
    ),
    ("world recipe, MCQ scope swaps, negation-only share 0.5", {"negation_only_share": 0.5}, SCOPE_SWAPS),
)
ROWS = (
    *((label, {**BEFORE_BREADTH, **mix}, settings) for label, mix, settings in ROWS_BEFORE_BREADTH),
    # the negator's 23 train families (13 + 10 for breadth, negation_plugins/phrasings.toml)
    ("world recipe with the breadth families (--recipe world)", {}, SCOPE_SWAPS),
    ("world-lora recipe with the breadth families (--recipe world-lora)", {}, RECIPES["world-lora"].values()),
    ("world recipe with the breadth families, 5 epochs (the demo)", {}, {**SCOPE_SWAPS, "epochs": 5.0}),
    # does LoRA trail (row 37 vs 36) because the breadth families' cue words, never in the base model's pretraining,
    # keep random embeddings under LoRA? Their rows train here (peft trainable tokens)
    (
        "world-lora recipe with the breadth families, negation words' embeddings trained",
        {},
        {**RECIPES["world-lora"].values(), "lora_trainable_tokens": "negation"},
    ),
    # LoRA fits even the seen phrasings less than full tuning (row 37 vs 36): full-rank adapters on the 64-wide tower
    (
        "world-lora recipe with the breadth families, LoRA r64 alpha 128",
        {},
        {**RECIPES["world-lora"].values(), "lora_rank": 64, "lora_alpha": 128.0},
    ),
)


def prepare_base(workdir: Path):
    """The default world and its base model (the package's shipped one; pretrained and cached if settings differ)."""
    from negation_plugins.world import WorldConfig, make_world
    from negation_plugins.world.export import WorldFiles
    from trainers.pretrain_world import PretrainConfig, pretrain

    world_dir = workdir / "world"
    world = (
        WorldFiles.at(world_dir)
        if (world_dir / "world.json").is_file()
        else make_world(world_dir, WorldConfig(), progress=False)
    )
    pretrain(world, workdir / "base_model", PretrainConfig(), progress=False)
    return world, f"local-dir:{workdir / 'base_model'}"


def records_for(workdir: Path, world, mix: dict, seed: int) -> Path:
    """Template-negation records (absence + presence) with the negator options ``mix``, cached per mix and seed."""
    from trainers.demo import negation_records

    name = "-".join(f"{k}={v}" for k, v in sorted(mix.items())) or "default"  # families=no,without,...: < 200 chars
    path = workdir / f"records-{name}-seed{seed}.jsonl"
    if not path.is_file():
        negation_records(world, path, seed=seed, progress=False, **mix)
    return path


def trained_with(out: Path, config) -> bool:
    """Whether ``out`` holds a finished run of exactly ``config`` (its results.json records the settings). The
    DataLoader workers are left out: their default follows ``--threads``, and they place work, not change it."""
    import dataclasses

    from trainers.config import TrainConfig

    results = out / "results.json"
    if not (results.is_file() and (out / "open_clip_model.safetensors").is_file()):
        return False
    placement = {"dataloader_num_workers": None}
    settings = {**json.loads(json.dumps(dataclasses.asdict(config))), **placement}
    # a setting added to the trainer after the run was trained at its default value
    defaults = json.loads(json.dumps(dataclasses.asdict(TrainConfig())))
    return {**defaults, **json.loads(results.read_text()).get("config", {}), **placement} == settings


def steering_fitted(spec: str, records: Path) -> str:
    """``steering:FILE`` for a direction fitted on the model ``spec`` itself from the (caption, negation) pairs of
    ``records``, cached in the model's own folder (``negclip corrections fit`` in one call)."""
    from negation_plugins import load_clip
    from negation_plugins.benchmarks.probe import read_pairs
    from negation_plugins.corrections import fit_steering, save_steering

    path = Path(spec.removeprefix("local-dir:")) / f"steering-{records.stem}.safetensors"
    if not path.is_file():
        direction, meta = fit_steering(load_clip(spec), read_pairs(str(records))[0])
        save_steering(path, direction, meta)
    return f"steering:{path}"


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
    parser.add_argument("--workdir", default="/tmp/negclip-compare")
    parser.add_argument(
        "--steps", type=int, default=None, help="optimizer steps per run [default: the recipe's 5 epochs]"
    )
    parser.add_argument("--seeds", default="0", help="comma list of fine-tuning and negation seeds")
    parser.add_argument("--only", default=None, help="comma list of row numbers (1-based) to run")
    parser.add_argument("--correction", action="append", default=[], help="also score each model with this correction")
    parser.add_argument(
        "--reuse", action="store_true", help="score earlier runs with identical settings instead of retraining them"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: on a loaded machine 2 threads spin-wait, ~8x slower)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from trainers.config import build_config
    from trainers.demo import evaluate_on_world
    from trainers.finetune import train

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    world, base = prepare_base(workdir)
    base_scores = evaluate_on_world(base, world)
    rows = list(enumerate(ROWS, 1))
    if args.only:
        keep = {int(x) for x in args.only.split(",")}
        rows = [(i, row) for i, row in rows if i in keep]
    names = list(figures(base_scores, base_scores))
    print(f"steps={args.steps} seeds={seeds}; --recipe world plus each row's settings; held-out scenes")
    header = f"| {'row':<48} | " + " | ".join(names) + " | s/run |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")

    def print_row(label, runs, seconds=None):
        cells = " | ".join(cell([r[n] for r in runs]) for n in names)
        print(f"| {label:<48} | {cells} | {'-' if seconds is None else f'{seconds:.0f}'} |", flush=True)

    def with_corrections(spec, records, runs_by_correction):
        for correction in args.correction:
            applied = steering_fitted(spec, records) if correction == STEERING_FIT else correction
            scores = evaluate_on_world(spec, world, correction=applied)
            runs_by_correction.setdefault(correction, []).append(figures(scores, base_scores))

    base_corrected: dict[str, list] = {}
    with_corrections(base, records_for(workdir, world, {}, seeds[0]), base_corrected)
    print_row("base model (no fine-tuning)", [figures(base_scores, base_scores)])
    for correction, runs in base_corrected.items():
        print_row(f"  + {correction}", runs)
    results = {"steps": args.steps, "base": base_scores, "rows": {}}
    for number, (label, mix, settings) in rows:
        runs, corrected, seconds = [], {}, []
        for seed in seeds:
            out = workdir / f"run-{number}-seed{seed}"
            records = records_for(workdir, world, mix, seed)
            config = build_config(
                "world",
                **{
                    "model": base,
                    "train": str(records),
                    "images": str(world.images),
                    "output": str(out),
                    "max_steps": args.steps,
                    "seed": seed,
                    "val_fraction": 0.05,
                    "progress": False,
                    "log_with": "none",
                    "export_transformers": False,
                    **settings,
                },
            )
            reused = args.reuse and trained_with(out, config)
            started = time.perf_counter()
            if not reused:
                # a rerun trains afresh (the trainer refuses an output holding an earlier run's checkpoints)
                shutil.rmtree(out, ignore_errors=True)
                train(config)
            runs.append(figures(evaluate_on_world(f"local-dir:{out}", world), base_scores))
            if not reused:  # s/run is training + evaluation; a reused run has no time of its own here
                seconds.append(time.perf_counter() - started)
            with_corrections(f"local-dir:{out}", records, corrected)
        print_row(f"{number}. {label}", runs, statistics.fmean(seconds) if seconds else None)
        for correction, corrected_runs in corrected.items():
            print_row(f"  + {correction}", corrected_runs)
        results["rows"][label] = {"mix": mix, "settings": settings, "runs": runs, "corrected": corrected}
    # rows of earlier runs in the same workdir (e.g. with --only) are kept
    path = workdir / "compare_training.json"
    earlier = json.loads(path.read_text())["rows"] if path.is_file() else {}
    path.write_text(json.dumps({**results, "rows": {**earlier, **results["rows"]}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
