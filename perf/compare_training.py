"""Which objectives, data mix and tuning teach negation that reaches UNSEEN phrasings? Runs experiment rows, writes
one JSON result per (row, world) into experiments/results/ and prints one table.

    python perf/compare_training.py --rows 36-breadth --seeds 0,1,2
    python perf/compare_training.py --rows 28,29 --world shapes --correction span-subtraction:scale=0.3
    python perf/compare_training.py --rows 38 --steps 20 --seeds 0      # a short check, labelled by its steps

A row is a TOML file in experiments/rows/ (``NN-name.toml``: description, the question it tests, the recipe it
starts from, ``[negator]`` template negator options = the data mix, ``[settings]`` trainer settings over the
recipe); ``--rows`` takes file names, their number or their name (``38``, ``breadth-5-epochs``,
``38-breadth-5-epochs``). Every row of one run trains from the same world and base model (``--world``, see
``prepare_world``). Scores on the world's held-out scenes: MCQ overall / affirmation / negation / hybrid, split by
the phrasing family of each negation and hybrid item where the world's MCQ records it (``seen``: train families,
``held-out``: families never in training data, each with the affirmation items included), and affirmative
image->text R@1 relative to the base model. The result schema is in experiments/README.md; docs/results.md is
generated from the results by ``python -m negation_plugins.docs_gen pages``.

``--correction SPEC`` (repeatable) also scores each model with that training-free correction applied at encode time
(negation_plugins/corrections.py); ``steering:fit`` fits a steering direction on each model itself from its row's
records, as ``negclip corrections fit MODEL --pairs RECORDS`` would. ``--reuse`` scores an earlier run of the same
row, seed and settings in the workdir instead of training it again. A result file that already holds runs of the
same settings gains the new seeds (a seed run again replaces its earlier entry); other settings replace the file.

Without ``--steps`` each row trains for its own epochs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ROWS_DIR = REPO / "experiments" / "rows"
RESULTS_DIR = REPO / "experiments" / "results"
SCHEMA = 1
STEERING_FIT = "steering:fit"
WORLDS = ("shapes", "icons")  # negation_plugins/world/kinds.py; icons is for reporting only, never for choosing
# trainer settings that name this machine's files: a result records the base model and world instead
PATH_SETTINGS = ("model", "train", "images", "output")
# figures of one evaluation, in table order; seen/held-out are None where the world's MCQ records no phrasing split
FIGURES = (
    "mcq",
    "affirmation",
    "negation",
    "hybrid",
    "seen_mcq",
    "seen_negation",
    "seen_hybrid",
    "held_out_mcq",
    "held_out_negation",
    "held_out_hybrid",
    "i2t_r1",
    "t2i_r1",
    "i2t_r1_vs_base",
)


@dataclasses.dataclass(frozen=True)
class Row:
    """One experiment row, as its TOML file says."""

    name: str  # the file name without .toml: NN-name
    description: str
    question: str
    recipe: str | None
    negator: dict
    settings: dict

    def answers_to(self, key: str) -> bool:
        """Whether ``--rows`` entry ``key`` names this row: its file name, its number or its name after the number."""
        number, _, name = self.name.partition("-")
        return key in (self.name, name) or (key.isdigit() and number.isdigit() and int(key) == int(number))

    @classmethod
    def read(cls, path: Path) -> Row:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise SystemExit(f"error: {path}: not valid TOML: {error}") from None
        unknown = set(data) - {"description", "question", "recipe", "headline", "negator", "settings"}
        missing = {"description", "question"} - set(data)
        if unknown or missing:
            problem = f"unknown keys {sorted(unknown)}" if unknown else f"missing {sorted(missing)}"
            raise SystemExit(f"error: {path}: {problem}")
        return cls(
            name=path.stem,
            description=data["description"],
            question=data["question"],
            recipe=data.get("recipe"),
            negator=data.get("negator", {}),
            settings=data.get("settings", {}),
        )


def read_rows(folder: Path = ROWS_DIR) -> list[Row]:
    return [Row.read(path) for path in sorted(folder.glob("*.toml"))]


def select_rows(rows: list[Row], wanted: str) -> list[Row]:
    """The rows named in the comma list ``wanted`` (a file name, its number or its name after the number), or all."""
    if wanted == "all":
        return rows
    chosen = []
    for key in (k.strip() for k in wanted.split(",") if k.strip()):
        matches = [row for row in rows if row.answers_to(key)]
        if len(matches) != 1:
            known = ", ".join(row.name for row in rows)
            raise SystemExit(f"error: --rows {key!r}: {'ambiguous' if matches else 'no such row'}; rows: {known}")
        chosen.append(matches[0])
    return chosen


def prepare_world(name: str, workdir: Path):
    """The world ``name`` (made once under ``workdir``) and the ``load_clip`` spec of its base model.

    ``shapes``: the package's synthetic world (``negclip world make`` defaults) and its shipped base model (pretrained
    and cached if the settings differ); ``icons``: the second world (``negclip world make --kind icons``) and its
    own shipped base model. A workdir holds one world (its records and runs are not named by world)."""
    from negation_plugins.world import WorldConfig, make_world
    from negation_plugins.world.export import WorldFiles
    from trainers.pretrain_world import PretrainConfig, pretrain

    if name not in WORLDS:
        raise SystemExit(f"error: --world {name!r}: unknown; worlds: {', '.join(WORLDS)}")
    world_dir = workdir / "world"
    world = (
        WorldFiles.at(world_dir)
        if (world_dir / "world.json").is_file()
        else make_world(world_dir, WorldConfig(kind=name), progress=False)
    )
    if world.kind != name:
        raise SystemExit(
            f"error: --workdir {workdir} holds the {world.kind} world; give --world {name} its own workdir"
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
    """The flat figures (``FIGURES``) of one evaluation; ``base`` is the base model's for the retrieval ratio."""
    mcq, retrieval = scores["mcq"], scores["retrieval"]
    out = {"mcq": mcq["accuracy"], **{kind: mcq[kind] for kind in ("affirmation", "negation", "hybrid")}}
    splits = mcq.get("by_phrasing_split", {})
    for split, prefix in (("train", "seen"), ("held-out", "held_out")):
        for column, key in (("mcq", "accuracy"), ("negation", "negation"), ("hybrid", "hybrid")):
            out[f"{prefix}_{column}"] = splits[split][key] if split in splits else None
    out["i2t_r1"], out["t2i_r1"] = round(retrieval["i2t_R@1"], 4), round(retrieval["t2i_R@1"], 4)
    out["i2t_r1_vs_base"] = round(retrieval["i2t_R@1"] / max(base["retrieval"]["i2t_R@1"], 1e-9), 4)
    return out


def summary(runs: list[dict]) -> dict:
    """Per figure over the seeds: mean, std (sample; 0 for one seed), min, max; None where a figure is missing."""
    out = {}
    for name in FIGURES:
        values = [run[name] for run in runs if run.get(name) is not None]
        out[name] = (
            {
                "mean": round(statistics.fmean(values), 4),
                "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
                "min": min(values),
                "max": max(values),
            }
            if values
            else None
        )
    return out


def cell(stats: dict | None) -> str:
    if stats is None:
        return "-"
    return f"{stats['mean']:.3f}" if stats["std"] == 0 else f"{stats['mean']:.3f}±{stats['std']:.3f}"


def git_commit() -> dict:
    """The commit the code ran at, and whether tracked files differed from it (``dirty``)."""

    def git(*args):
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None}


def machine(note: str) -> dict:
    """What the figures depend on besides the code: CPU, cores, load, torch version (thread count is per run)."""
    model = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").is_file()
        else platform.processor()
    )
    return {
        "note": note,
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def result_path(results_dir: Path, row: Row, world: str, steps: int | None) -> Path:
    """One file per (row, world); a run with ``--steps`` is a different setting and gets its own file."""
    return results_dir / f"{row.name}--{world}{'' if steps is None else f'--steps{steps}'}.json"


def write_result(path: Path, result: dict) -> dict:
    """Write ``result``; runs of identical settings already in ``path`` are kept unless this run has their seed."""
    from negation_plugins.atomic import atomic_write_json

    if path.is_file():
        earlier = json.loads(path.read_text())
        if earlier.get("settings") == result["settings"] and earlier.get("world") == result["world"]:
            seeds = {run["seed"] for run in result["runs"]}
            runs = [run for run in earlier["runs"] if run["seed"] not in seeds] + result["runs"]
            result = {**result, "runs": sorted(runs, key=lambda run: run["seed"])}
    result["seeds"] = [run["seed"] for run in result["runs"]]
    result["summary"] = summary([run["figures"] for run in result["runs"]])
    corrections = sorted({name for run in result["runs"] for name in run.get("corrected", {})})
    result["corrected_summary"] = {
        name: summary([run["corrected"][name] for run in result["runs"] if name in run.get("corrected", {})])
        for name in corrections
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result, indent=1)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", required=True, help="comma list of rows (file name, number or name) to run, or all")
    parser.add_argument("--world", default="shapes", choices=WORLDS, help="the world to train and score on")
    parser.add_argument("--seeds", default="0", help="comma list of fine-tuning and negation seeds")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run [default: the row's epochs]")
    parser.add_argument("--correction", action="append", default=[], help="also score each model with this correction")
    parser.add_argument(
        "--reuse", action="store_true", help="score earlier runs with identical settings instead of retraining them"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: on a loaded machine 2 threads spin-wait, ~8x slower)"
    )
    parser.add_argument("--workdir", default="/tmp/negclip-compare", help="world, base model, records and runs")
    parser.add_argument("--rows-dir", default=str(ROWS_DIR), help="folder of row TOML files")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR), help="folder the JSON results are written to")
    parser.add_argument("--machine-note", default="", help="free text stored with the results (e.g. 'quiet machine')")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "perf/compare_training.py", *(sys.argv[1:] if argv is None else argv)])
    rows = select_rows(read_rows(Path(args.rows_dir)), args.rows)
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(args.threads)
    from trainers.config import build_config
    from trainers.demo import evaluate_on_world
    from trainers.finetune import train

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    world, base = prepare_world(args.world, workdir)
    base_scores = evaluate_on_world(base, world)
    base_figures = figures(base_scores, base_scores)

    def corrected(spec, records):
        out = {}
        for correction in args.correction:
            applied = steering_fitted(spec, records) if correction == STEERING_FIT else correction
            out[correction] = figures(evaluate_on_world(spec, world, correction=applied), base_scores)
        return out

    base_corrected = corrected(base, records_for(workdir, world, {}, seeds[0]))
    print(f"world={args.world} steps={args.steps} seeds={seeds} threads={args.threads}; held-out scenes")
    header = f"| {'row':<44} | " + " | ".join(FIGURES) + " | s/run |"
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")

    def print_row(label, stats, seconds=None):
        cells = " | ".join(cell(stats[name]) for name in FIGURES)
        print(f"| {label:<44} | {cells} | {'-' if seconds is None else f'{seconds:.0f}'} |", flush=True)

    print_row("base model (no fine-tuning)", summary([base_figures]))
    for correction, values in base_corrected.items():
        print_row(f"  + {correction}", summary([values]))
    machine_info, code = machine(args.machine_note), git_commit()
    for row in rows:
        runs = []
        for seed in seeds:
            out = workdir / f"run-{row.name}-seed{seed}"
            records = records_for(workdir, world, row.negator, seed)
            steps = {} if args.steps is None else {"max_steps": args.steps}
            settings = {"val_fraction": 0.05, **row.settings, **steps, "seed": seed}
            config = build_config(
                row.recipe,
                **{
                    "model": base,
                    "train": str(records),
                    "images": str(world.images),
                    "output": str(out),
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
            run = {
                "seed": seed,
                "figures": figures(evaluate_on_world(f"local-dir:{out}", world), base_scores),
                "corrected": corrected(f"local-dir:{out}", records),
                # training + evaluation; a reused run has no time of its own here
                "seconds": None if reused else round(time.perf_counter() - started, 1),
                "reused": reused,
                "threads": args.threads,
                **code,
                "machine": machine_info,
                "command": command,
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            runs.append(run)
        trainer_settings = json.loads(json.dumps(dataclasses.asdict(config)))
        for key in (*PATH_SETTINGS, "seed", "dataloader_num_workers"):  # per machine and per run, not the setting
            trainer_settings.pop(key)
        result = write_result(
            result_path(Path(args.results_dir), row, args.world, args.steps),
            {
                "schema": SCHEMA,
                "row": row.name,
                "description": row.description,
                "question": row.question,
                "world": args.world,
                "settings": {
                    "recipe": row.recipe,
                    "negator": row.negator,
                    "row_settings": row.settings,
                    "steps": args.steps,
                    "trainer": trainer_settings,
                },
                "base_model": {"figures": base_figures, "corrected": base_corrected},
                "runs": runs,
            },
        )
        seconds = [run["seconds"] for run in runs if run["seconds"] is not None]
        print_row(row.name, result["summary"], statistics.fmean(seconds) if seconds else None)
        for correction, stats in result["corrected_summary"].items():
            print_row(f"  + {correction}", stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
