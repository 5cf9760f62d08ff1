"""The trainer at scale, as ratios measured in one run (issue 13); prints the README's figures.

    python perf/bench_scale.py --workdir /tmp/negclip-bench-scale

1. image features, images/s: the old path (PIL in the training thread, fp32, one rank) vs the store through a
   DataLoader with 0 and 2 workers, 1 vs 2 processes (gloo), and a second run that finds everything in the store;
2. validation share of wall time with the defaults (--recipe world, eval once per epoch, capped batches) on a
   20k-example set;
3. trainer vs a bare PyTorch loop, steps/s, full and LoRA (goal >= 0.95x);
4. TNG on-the-fly negation's share of the training thread (goal <= 1 %), and its cost in a worker per batch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def old_path_images_per_second(clip, preprocess, files: list[Path]) -> float:
    """What the trainer did before the store: decode and preprocess in the training thread, 256 at a time."""
    from PIL import Image

    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(files), 256):
            pixels = []
            for path in files[start : start + 256]:
                with Image.open(path) as image:
                    pixels.append(preprocess(image.convert("RGB")))
            clip.encode_image(torch.stack(pixels), normalize=True)
    return len(files) / (time.perf_counter() - started)


EMBED_SCRIPT = """
import json, sys, time
from pathlib import Path

import torch
from accelerate import Accelerator

from negation_plugins import load_clip
from trainers.features import build_feature_table

spec, images, listing, store, workers, threads = sys.argv[1:7]
torch.set_num_threads(int(threads))
accelerator = Accelerator(cpu=True)
bundle = load_clip(spec)
files = [Path(images) / name for name in json.loads(Path(listing).read_text())]
accelerator.wait_for_everyone()
started = time.perf_counter()
_, counts = build_feature_table(accelerator, bundle.model, bundle.preprocess, files, store, int(workers), False)
accelerator.wait_for_everyone()
if accelerator.is_main_process:
    print(json.dumps({"seconds": time.perf_counter() - started, **counts}))
"""


def store_images_per_second(spec: str, images: Path, files: list[str], store: Path, processes: int, workers: int):
    """Wall time of build_feature_table (hashing the vision tower, embedding what the store lacks, writing,
    reading back) in 1 or 2 gloo processes sharing the 2 threads."""
    script, listing = store.parent / "embed_store.py", store.parent / "files.json"
    script.write_text(EMBED_SCRIPT)
    listing.write_text(json.dumps(files))
    threads = str(max(1, 2 // processes))
    env = dict(os.environ, PYTHONPATH=str(ROOT), ACCELERATE_USE_CPU="1", OMP_NUM_THREADS=threads)
    command = [sys.executable]
    if processes > 1:
        command = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_machines", "1"]
        command += ["--num_processes", str(processes), "--mixed_precision", "no", "--dynamo_backend", "no"]
        command += ["--main_process_port", "29533"]
    command += [str(script), spec, str(images), str(listing), str(store), str(workers), threads]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return len(files) / result["seconds"], result


def large_records(base: Path, path: Path, n_examples: int) -> None:
    """n_examples distinct (image, caption) examples: the world's records, captions numbered per repeat."""
    rows = [json.loads(line) for line in base.read_text().splitlines()]
    examples = {(r["image"], r["caption"]) for r in rows}
    repeats = -(-n_examples // len(examples))
    out, kept = [], set()
    for k in range(repeats):
        for row in rows:
            key = (row["image"], f"{row['caption'].rstrip('.')} ({k}).")
            if key not in kept and len(kept) >= n_examples:
                continue
            kept.add(key)
            out.append({**row, "caption": key[1]})
    path.write_text("".join(json.dumps(r) + "\n" for r in out))


def validation_share(spec: str, world, base_records: Path, workdir: Path, n_examples: int, epochs: float) -> dict:
    from trainers.config import build_config
    from trainers.finetune import train

    records = workdir / "records-20k.jsonl"
    large_records(base_records, records, n_examples)
    config = build_config(
        "world",
        model=spec,
        train=str(records),
        images=str(world.images),
        output=str(workdir / "val-share"),
        epochs=epochs,
        progress=False,
        log_with="none",
        export_transformers=False,
        feature_store=str(workdir / "store-val"),
        checkpointing_steps=0,
    )
    summary = train(config)
    seconds = summary["seconds"]
    per_eval = seconds["validation"] / summary["evaluations"]
    per_step = seconds["train"] / summary["steps"]
    projected = (1 + 5) * per_eval / (5 * summary["steps"] * per_step + (1 + 5) * per_eval)
    return {
        **seconds,
        "share": seconds["validation"] / (seconds["train"] + seconds["validation"]),
        "evaluations": summary["evaluations"],
        "projected_5_epochs": projected,
        "eval_every": summary["eval_every"],
        "val_batches": summary["val_batches"],
        "steps": summary["steps"],
        "train_examples": summary["train_examples"],
    }


def on_the_fly_share(spec: str, world, workdir: Path, steps: int) -> dict:
    """cProfile follows the training thread only: time inside TNG's negation there vs the whole run; and the
    negation's cost per batch where it now runs (a worker), against a step."""
    import cProfile
    import pstats

    from trainers.config import build_config
    from trainers.finetune import train

    config = build_config(
        "world",
        model=spec,
        train=str(world.captions),
        instances=str(world.instances),
        images=str(world.images),
        negation="on-the-fly",
        objective=["tng"],
        output=str(workdir / "otf"),
        max_steps=steps,
        val_fraction=0.0,
        progress=False,
        log_with="none",
        export_transformers=False,
        feature_store=str(workdir / "store-otf"),
        checkpointing_steps=0,
    )
    profiler = cProfile.Profile()
    profiler.enable()
    summary = train(config)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = summary["seconds"]["train"]
    in_thread = sum(v[3] for k, v in stats.items() if k[2] == "negate_on_the_fly")
    from negation_plugins.data.onthefly import OnTheFlyNegation

    captions = [
        json.loads(json.dumps(a["caption"])) for a in json.loads(Path(world.captions).read_text())["annotations"]
    ]
    embeds = torch.nn.functional.normalize(torch.randn(64, 64), dim=-1)
    started = time.perf_counter()
    for k in range(20):
        OnTheFlyNegation(seed=k)(captions[k * 64 : (k + 1) * 64], image_embeds=embeds)
    per_batch = (time.perf_counter() - started) / 20
    return {"share": in_thread / total, "worker_ms": 1000 * per_batch, "step_ms": 1000 * total / summary["steps"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/negclip-bench-scale")
    parser.add_argument("--images", type=int, default=600, help="scenes in the benchmark world")
    parser.add_argument("--val-examples", type=int, default=20_000)
    parser.add_argument("--val-epochs", type=float, default=1.0, help="epochs run (the share is also projected to 5)")
    parser.add_argument("--steps", type=int, default=60, help="steps per throughput run")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: features,validation,speed,otf")
    args = parser.parse_args()
    torch.set_num_threads(2)
    skip = set(args.skip.split(","))
    from bench_trainer_throughput import bare_steps_per_second, setup, trainer_steps_per_second

    from negation_plugins import load_clip
    from trainers.config import DEFAULT_OBJECTIVES

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    world, spec, records = setup(workdir, args.images, 0)
    print(f"machine: {os.cpu_count()} CPUs visible (2 threads used, shared), torch {torch.__version__}")

    if "features" not in skip:
        files = sorted(p.name for p in Path(world.images).iterdir() if p.suffix in (".png", ".jpg"))
        bundle = load_clip(spec)
        old = old_path_images_per_second(bundle.model, bundle.preprocess, [Path(world.images) / f for f in files])
        rates = {}
        for name, processes, workers in (
            ("1 proc, 0 workers", 1, 0),
            ("1 proc, 2 workers", 1, 2),
            ("2 procs, 1 worker each", 2, 1),
        ):
            store = workdir / f"store-{processes}-{workers}"
            shutil.rmtree(store, ignore_errors=True)
            rates[name], _ = store_images_per_second(spec, Path(world.images), files, store, processes, workers)
        warm, counts = store_images_per_second(spec, Path(world.images), files, workdir / "store-1-2", 1, 2)
        print(f"\n[features] {len(files)} images of {world.images}; images/s (ratio to the old path)")
        print(f"  old path (PIL in the training thread):  {old:8.1f}")
        for name, rate in rates.items():
            print(f"  store, {name:<24}  {rate:8.1f}  ({rate / old:.2f}x)")
        print(
            f"  2 procs vs 1 proc (0 workers):         {rates['2 procs, 1 worker each'] / rates['1 proc, 0 workers']:.2f}x"
        )
        print(
            f"  2 workers vs 0 workers (1 proc):       {rates['1 proc, 2 workers'] / rates['1 proc, 0 workers']:.2f}x"
        )
        print(
            f"  second run, all from the store:        {warm:8.1f}  ({warm / old:.1f}x; computed {counts['computed']})"
        )

    if "validation" not in skip:
        share = validation_share(spec, world, records, workdir, args.val_examples, args.val_epochs)
        print(
            f"\n[validation] defaults (--recipe world) on {share['train_examples']} training examples of {args.val_examples}:"
        )
        print(
            f"  {share['steps']} steps, validation every {share['eval_every']} steps on {share['val_batches']} batches "
            f"({share['evaluations']} validations incl. the one before training): train {share['train']:.1f} s, "
            f"validation {share['validation']:.1f} s -> {100 * share['share']:.2f} % of train + validation time "
            f"(features {share['features']:.1f} s)"
        )
        print(
            f"  the world recipe's 5 epochs (6 validations), from the measured per-step and per-validation times: "
            f"{100 * share['projected_5_epochs']:.2f} %"
        )

    if "speed" not in skip:
        objectives = list(DEFAULT_OBJECTIVES)
        print(f"\n[speed] trainer vs bare PyTorch loop, batch 64, {args.steps} steps, best of 2")
        for tuning in ("full", "lora"):
            bare = max(
                bare_steps_per_second(spec, records, world, args.steps, 64, tuning, objectives) for _ in range(2)
            )
            trainer = max(
                trainer_steps_per_second(spec, records, world, workdir, args.steps, 64, tuning, objectives, True)
                for _ in range(2)
            )
            print(f"  [{tuning}] bare {bare:6.2f} steps/s, trainer {trainer:6.2f} steps/s -> {trainer / bare:.2f}x")

    if "otf" not in skip:
        otf = on_the_fly_share(spec, world, workdir, args.steps)
        print(f"\n[on-the-fly] TNG negation in the training thread: {100 * otf['share']:.2f} % of training time")
        print(f"  in a worker instead: {otf['worker_ms']:.1f} ms per batch of 64 vs a {otf['step_ms']:.1f} ms step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
