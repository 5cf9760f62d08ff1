"""``negclip demo``: the whole story on the synthetic world, in one folder, in minutes on a CPU.

1. make the world (rendered shape scenes, COCO captions/instances, NegBench-format MCQ CSV);
2. the base CLIP pretrained on affirmative captions only: it reads "no X" as "X" (for the default world and seed the
   model shipped with the package, so every machine starts from the same weights; else pretrained and cached);
3. generate negation records: template negator + annotation verifier, absence and presence kinds;
4. fine-tune the text tower with the best measured recipe (``--recipe world``) for a third of its epochs;
5. evaluate base and fine-tuned model on held-out scenes: MCQ accuracy per type, for seen and held-out negation
   phrasings, and affirmative Recall@K (``coco-retrieval``);
6. write results.json, before_after.png and the model card (README.md) next to the trained model.

Layout of ``--output``: world/, base_model/, records.jsonl, model/ (the trainer's output), results.json,
before_after.png, README.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from negation_plugins.atomic import atomic_write, atomic_write_json

logger = logging.getLogger(__name__)

MCQ_TYPES = ("affirmation", "negation", "hybrid")


def negation_records(world, out: Path, seed: int = 0, progress: bool = True, **negator_options) -> dict:
    """Template negator (with ``negator_options``) + annotation verifier on the world's training captions, absence
    and presence kinds: "a red cross and a star" -> "... but no circle" (true) / "a star, without a cross" (false)."""
    from negation_plugins import plugins
    from negation_plugins.data.generate import generate
    from negation_plugins.data.io import read_coco_captions

    captions = read_coco_captions(world.captions, world.instances, world.images)
    negator = plugins.get_one("negators", "template")(**negator_options)
    verifier = plugins.get_one("verifiers", "annotations")(images=str(world.images))
    return generate(
        captions,
        out,
        negator,
        verifier,
        ("absence", "presence"),
        captions.categories,
        seed=seed,
        overwrite=True,
        progress=progress,
    )


def demo_train_config(model: str, records: Path, world, output: Path, seed: int, progress: bool, **overrides):
    """The demo's fine-tuning: ``--recipe world`` (full tuning) for 5 of its 15 epochs, so the main job fits in 5
    minutes on 2 CPU cores; exactly row 38 of perf/compare_training.py (the README's seed-0 figures of that row are the
    demo's; with the world's 13 train families only it is row 32, without the recipe's MCQ scope swaps too row 23;
    LoRA for 5 epochs, row 24, learns less). No checkpoint
    selection on the world's MCQ: its questions use held-out phrasings, and choosing weights by them would let those
    phrasings into training."""
    from .config import build_config

    settings = {
        "model": model,
        "train": str(records),
        "images": str(world.images),
        "output": str(output),
        "seed": seed,
        "epochs": 5.0,
        "val_fraction": 0.05,
        "progress": progress,
        "log_with": "tensorboard",
    }
    settings.update(overrides)
    return build_config("world", **settings)


def run_demo(
    output: str | os.PathLike,
    *,
    seed: int = 0,
    n_images: int = 2000,
    pretrain_steps: int | None = None,
    max_steps: int | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> dict:
    """Run every step and return the results dict (also in ``output/results.json``)."""
    from negation_plugins.world import WorldConfig, make_world

    from .finetune import train
    from .pretrain_world import PretrainConfig, pretrain

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    timings, started = {}, time.perf_counter()

    def lap(name):
        nonlocal started
        timings[name] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()

    world = make_world(output / "world", WorldConfig(n_images=n_images, seed=seed), progress=progress)
    lap("make_world")
    pretrain_config = (
        PretrainConfig(seed=seed) if pretrain_steps is None else PretrainConfig(seed=seed, steps=pretrain_steps)
    )
    pretrain_result = pretrain(world, output / "base_model", pretrain_config, use_cache=use_cache, progress=progress)
    lap("pretrain")

    records = output / "records.jsonl"
    data_summary = negation_records(world, records, seed=seed, progress=progress)
    lap("generate")

    base_spec = f"local-dir:{output / 'base_model'}"
    overrides = {} if max_steps is None else {"max_steps": max_steps}
    config = demo_train_config(base_spec, records, world, output / "model", seed, progress, **overrides)
    shutil.rmtree(config.output, ignore_errors=True)  # a rerun fine-tunes afresh, not on an earlier run's checkpoints
    summary = train(config)
    lap("finetune")

    before, after = evaluate_on_world(base_spec, world), evaluate_on_world(f"local-dir:{output / 'model'}", world)
    lap("evaluate")
    retention = _retention(before["retrieval"], after["retrieval"])
    results = {
        "before": before,
        "after": after,
        "affirmative_retrieval_retained": retention,
        "gain": {t: _diff(after["mcq"][t], before["mcq"][t]) for t in ("accuracy", *MCQ_TYPES)},
        "base_model": {k: pretrain_result[k] for k in ("i2t_R@1", "t2i_R@1", "cached", "shipped")},
        "data": {k: data_summary.get(k) for k in ("absence", "presence", "captions", "verifier_rejected")},
        "training": {
            k: summary[k]
            for k in (
                "steps",
                "stopped_early",
                "train_examples",
                "trainable_parameters",
                "train_seconds",
                "examples_per_second",
            )
        },
        "settings": {
            "world": asdict(WorldConfig(n_images=n_images, seed=seed)),
            "finetune": {k: v for k, v in config.to_dict().items() if k not in ("progress",)},
        },
        "seconds": timings,
    }
    atomic_write_json(output / "results.json", results)
    plot_before_after(before["mcq"], after["mcq"], output / "before_after.png")
    _write_card(output, config, before, after, summary)
    return results


def evaluate_on_world(spec: str, world, correction: str | None = None) -> dict:
    """Held-out scenes: the world's MCQ and its affirmative retrieval (``coco-retrieval`` on the val captions),
    optionally with a training-free correction applied at encode time."""
    from negation_plugins import load_clip
    from negation_plugins.benchmarks.mcq import run_mcq
    from negation_plugins.benchmarks.retention import CocoRetrieval

    clip = load_clip(spec, correction=correction)
    return {
        "mcq": run_mcq(clip, world.mcq_csv, world.images, progress=False),
        "retrieval": CocoRetrieval().run(clip, captions=world.val_captions, images=world.images, progress=False),
    }


def _retention(before: dict, after: dict) -> dict:
    return {k: round(after[k] / before[k], 4) if before[k] else None for k in ("i2t_R@1", "t2i_R@1")}


def _diff(after, before):
    return None if after is None or before is None else round(after - before, 4)


def plot_before_after(before: dict, after: dict, path: Path) -> Path:
    """Grouped bars: MCQ accuracy per question type, base vs fine-tuned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["overall", *MCQ_TYPES]
    keys = [("accuracy",), *((t,) for t in MCQ_TYPES)]
    if "by_phrasing_split" in before:  # the world's MCQ: also negation phrasings never seen in training
        labels += ["overall\nheld-out", "negation\nheld-out", "hybrid\nheld-out"]
        keys += [("by_phrasing_split", "held-out", k) for k in ("accuracy", "negation", "hybrid")]
    positions = range(len(labels))
    figure, axes = plt.subplots(figsize=(8.4, 3.8), dpi=120)
    for offset, (name, values) in zip((-0.2, 0.2), (("base", before), ("fine-tuned", after))):
        heights = [_lookup(values, key) or 0.0 for key in keys]
        bars = axes.bar([p + offset for p in positions], heights, width=0.4, label=name)
        axes.bar_label(bars, labels=[f"{h:.2f}" for h in heights], fontsize=8)
    axes.axhline(0.25, color="grey", linestyle=":", linewidth=1, label="chance (4 options)")
    axes.set_xticks(list(positions), labels, fontsize=8)
    axes.set_ylim(0, 1.08)
    axes.set_ylabel("MCQ accuracy (held-out scenes)")
    axes.set_title("Negation MCQ on the synthetic world, before / after fine-tuning")
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    atomic_write(path, figure.savefig)
    plt.close(figure)
    return path


def _lookup(values: dict, key: tuple[str, ...]):
    for part in key:
        values = values[part]
    return values


def _write_card(output: Path, config, before: dict, after: dict, summary: dict) -> None:
    from negation_plugins.model_card import write_model_card

    for folder in (output, output / "model"):
        write_model_card(
            folder,
            base_model=config.model,
            results_before=before,
            results_after=after,
            objectives=config.objective,
            tuning=config.tuning,
            tags=["negation", "clip", *(["lora"] if config.tuning == "lora" else []), "synthetic-world"],
            model_name="negclip-demo-world",
            training={
                "steps": summary["steps"],
                "batch size": config.batch_size,
                "learning rate": config.lr,
                "seed": config.seed,
            },
            description="The `negclip demo` model: a tiny CLIP pretrained on the synthetic shape world's affirmative "
            f"captions, then fine-tuned ({config.tuning}) on template negations (absence + presence) of its "
            "training scenes. Results are on held-out scenes.",
        )
