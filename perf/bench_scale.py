"""The trainer at scale, as ratios measured in one run (issue 13); prints the README's figures.

    python perf/bench_scale.py --workdir /tmp/negclip-bench-scale
    python perf/bench_scale.py --skip features,validation        # only trainer vs bare loop and on-the-fly share
    python perf/bench_scale.py --profile full --steps 40          # instead: where a trainer run's time goes

1. image features, images/s: the old path (PIL in the training thread, fp32, one rank) vs the store through a
   DataLoader with 0 and 2 workers, 1 vs 2 processes (gloo), and a second run that finds everything in the store;
2. validation share of wall time with the defaults (--recipe world, eval once per epoch, capped batches) on a
   20k-example set;
3. trainer vs a bare PyTorch loop, steps/s, full and LoRA (goal >= 0.95x): the bare loop is the least a step can
   do (one fixed, pre-tokenized batch, precomputed image features, encode_text -> objectives -> backward -> clip
   grad norm -> AdamW, the trainer's math); the trainer does all it really does (draw batches and MCQ options,
   look tokens up, accelerate's accumulate/autocast/clip, logit-scale clamp, schedule, metrics). Same model,
   objectives, tuning and batch size; runs interleaved (bare, trainer, bare, ...): the best of --repeats of each,
   and the median ratio of neighbouring runs (robust to the shared machine's load changing during the benchmark);
4. TNG on-the-fly negation's share of the training thread (goal <= 1 %), with the DataLoader's workers and
   without (0 workers: the default on a CPU machine whose cores the model's threads use).
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


def setup(workdir: Path, n_images: int, seed: int):
    """The benchmark world, a world-size random-init CLIP and negation records (made once per workdir)."""
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


def world_run(spec: str, world, workdir: Path, name: str, **settings) -> dict:
    """One trainer run with the world recipe on the benchmark world; checkpoints and exports off."""
    from trainers.config import build_config
    from trainers.finetune import train

    config = build_config(
        "world",
        model=spec,
        images=str(world.images),
        output=str(workdir / name),
        progress=False,
        log_with="none",
        export_transformers=False,
        checkpointing_steps=0,
        **settings,
    )
    return train(config)


def trainer_steps_per_second(spec, records, world, workdir, steps, tuning, workers=None) -> float:
    summary = world_run(
        spec,
        world,
        workdir,
        "speed",
        train=str(records),
        tuning=tuning,
        max_steps=steps,
        val_fraction=0.0,
        feature_store=str(workdir / "store-speed"),
        dataloader_num_workers=workers,
        warmup_steps=1,
    )
    return summary["steps"] / summary["seconds"]["train"]


def bare_steps_per_second(spec, records, world, steps, tuning) -> float:
    """The world recipe's model/objectives/batch size/optimizer in a plain loop over one fixed batch."""
    import random

    from negation_plugins import load_clip
    from negation_plugins.losses import parse_objectives
    from negation_plugins.losses.batch import Draw, Pool
    from trainers.batches import load_examples, usable_examples
    from trainers.config import build_config
    from trainers.data import draw_keys
    from trainers.features import embed_files
    from trainers.finetune import split_text_features
    from trainers.optim import adamw
    from trainers.tuning import apply_tuning, open_clip_model

    recipe = build_config("world", tuning=tuning)
    objective = parse_objectives(recipe.objective)
    bundle = load_clip(spec)
    keys = objective.batch_keys
    examples, _ = usable_examples(load_examples(str(records), "records", None, None), keys, "bench")
    chunk = examples[: recipe.batch_size]
    model, _ = apply_tuning(
        bundle.model,
        tuning,
        lora_rank=recipe.lora_rank,
        lora_alpha=recipe.lora_alpha,
        lora_targets=recipe.lora_targets,
        freeze=recipe.freeze,
        seed=recipe.seed,
    )
    clip = open_clip_model(model)
    drawn = draw_keys(keys, Draw(chunk, random.Random(0), Pool(examples), recipe))
    images = {  # every image key (the image, CoN-CLIP's distractor) embedded once
        key: embed_files(clip, bundle.preprocess, [Path(world.images) / p for p in paths], workers=0)
        for key, paths in drawn["images"].items()
    }
    labels = {key: torch.tensor(values) for key, values in drawn["labels"].items()}
    tokens = bundle.tokenizer([t for texts in drawn["texts"].values() for t in texts])
    optimizer = adamw(model, recipe.lr, recipe.weight_decay)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        features = clip.encode_text(tokens, normalize=True)
        batch = {**images, **labels, "logit_scale": clip.logit_scale.exp()}
        batch.update(split_text_features(features, drawn["layout"], len(chunk)))
        loss, _ = objective(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps / (time.perf_counter() - start)


def profile_trainer(spec, records, world, workdir, steps: int, tuning: str) -> None:
    """Where a trainer run's time goes: top functions of the training thread by cumulative time."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    rate = trainer_steps_per_second(spec, records, world, workdir, steps, tuning)
    profiler.disable()
    print(f"[{tuning}] trainer under cProfile: {rate:.2f} steps/s over {steps} steps")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)


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
    records = workdir / "records-20k.jsonl"
    large_records(base_records, records, n_examples)
    summary = world_run(
        spec, world, workdir, "val-share", train=str(records), epochs=epochs, feature_store=str(workdir / "store-val")
    )
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


def on_the_fly_share(spec: str, world, workdir: Path, steps: int, workers: int) -> dict:
    """cProfile follows the training thread only: time inside TNG's negation there vs the training time; with
    workers the negation runs in them (with the feature table it needs)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    summary = world_run(
        spec,
        world,
        workdir,
        "otf",
        train=str(world.captions),
        instances=str(world.instances),
        negation="on-the-fly",
        objective=["tng"],
        max_steps=steps,
        val_fraction=0.0,
        feature_store=str(workdir / "store-otf"),
        dataloader_num_workers=workers,
    )
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = summary["seconds"]["train"]
    in_thread = sum(v[3] for k, v in stats.items() if k[2] == "negate_on_the_fly")
    return {"share": in_thread / total, "step_ms": 1000 * total / summary["steps"]}


def negation_ms_per_batch(world, batches: int = 20) -> float:
    """TNG's negation of one batch of 64 world captions (image features random: mining cost is the same)."""
    from negation_plugins.data.onthefly import OnTheFlyNegation

    captions = [a["caption"] for a in json.loads(Path(world.captions).read_text())["annotations"]]
    embeds = torch.nn.functional.normalize(torch.randn(64, 64), dim=-1)
    started = time.perf_counter()
    for k in range(batches):
        OnTheFlyNegation(seed=k)(captions[k * 64 : (k + 1) * 64], image_embeds=embeds)
    return 1000 * (time.perf_counter() - started) / batches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/negclip-bench-scale")
    parser.add_argument("--images", type=int, default=600, help="scenes in the benchmark world")
    parser.add_argument("--val-examples", type=int, default=20_000)
    parser.add_argument("--val-epochs", type=float, default=1.0, help="epochs run (the share is also projected to 5)")
    parser.add_argument("--steps", type=int, default=60, help="steps per throughput run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per throughput figure (best kept)")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: features,validation,speed,otf")
    parser.add_argument("--profile", choices=("full", "lora"), help="instead: one trainer run under cProfile")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (1 on a machine other jobs load: less contention noise)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(args.skip.split(","))
    from negation_plugins import load_clip
    from trainers.config import default_workers

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    world, spec, records = setup(workdir, args.images, 0)
    if args.profile:
        profile_trainer(spec, records, world, workdir, args.steps, args.profile)
        return 0
    print(f"machine: {os.cpu_count()} CPUs visible ({args.threads} torch threads, shared), torch {torch.__version__}")

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
            f"  5 epochs (6 validations), from the measured per-step and per-validation times: "
            f"{100 * share['projected_5_epochs']:.2f} %"
        )

    if "speed" not in skip:
        print(
            f"\n[speed] trainer (defaults: {default_workers()} DataLoader workers here) vs bare PyTorch loop, "
            f"--recipe world (batch 64), {args.steps} steps, interleaved, best of {args.repeats}"
        )
        for tuning in ("full", "lora"):
            runs = {"bare": [], "trainer": [], "trainer, 2 workers": []}
            for _ in range(args.repeats):
                runs["bare"].append(bare_steps_per_second(spec, records, world, args.steps, tuning))
                runs["trainer"].append(trainer_steps_per_second(spec, records, world, workdir, args.steps, tuning))
                if default_workers() != 2:
                    runs["trainer, 2 workers"].append(
                        trainer_steps_per_second(spec, records, world, workdir, args.steps, tuning, workers=2)
                    )
            bare = max(runs["bare"])
            print(f"  [{tuning}] bare loop {bare:6.2f} steps/s (runs: {', '.join(f'{r:.2f}' for r in runs['bare'])})")
            for name in ("trainer", "trainer, 2 workers"):
                if runs[name]:
                    best = max(runs[name])
                    pairs = sorted(t / b for t, b in zip(runs[name], runs["bare"]))
                    print(
                        f"  [{tuning}] {name:<18} {best:6.2f} steps/s -> best {best / bare:.2f}x bare, median of the "
                        f"interleaved pairs {pairs[len(pairs) // 2]:.2f}x (runs: {', '.join(f'{r:.2f}' for r in runs[name])})"
                    )
            sys.stdout.flush()

    if "otf" not in skip:
        per_batch = negation_ms_per_batch(world)
        print(f"\n[on-the-fly] TNG negation, --objective tng --negation on-the-fly, {args.steps} steps")
        for workers in (1, 0):
            otf = on_the_fly_share(spec, world, workdir, args.steps, workers)
            print(
                f"  {workers} workers: negation in the training thread {100 * otf['share']:.2f} % of training time "
                f"(step {otf['step_ms']:.1f} ms)"
            )
        print(f"  negating one batch of 64 (where it runs): {per_batch:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
