"""``negclip world make`` and ``negclip world pretrain``: build the synthetic world and its base model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from ..atomic import atomic_write_text
from ..hookspecs import hookimpl


@click.group(name="world")
def world_group():
    """The synthetic negation world: rendered scenes exported as COCO + NegBench files, and its base CLIP."""


@world_group.command(name="make")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the world into.")
@click.option("--n-images", default=2000, show_default=True, help="Scenes in total (train + val).")
@click.option("--seed", default=0, show_default=True)
@click.option("--image-size", default=32, show_default=True, help="Image side in pixels.")
@click.option("--val-fraction", default=0.1, show_default=True, help="Share of scenes held out (val MCQ/retrieval).")
def make_command(out, n_images, seed, image_size, val_fraction):
    """Render scenes and write images/, captions_*.json, instances_*.json, mcq_*.csv and world.json."""
    from .export import WorldConfig, make_world

    config = WorldConfig(n_images=n_images, seed=seed, image_size=image_size, val_fraction=val_fraction)
    try:
        files = make_world(out, config)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    manifest = json.loads((files.root / "world.json").read_text())
    click.echo(
        json.dumps(
            {
                "world": str(files.root),
                "n_train": manifest["n_train"],
                "n_val": manifest["n_val"],
                "mcq_csv": str(files.mcq_csv),
                "captions": str(files.captions),
            },
            indent=2,
        )
    )


@world_group.command(name="pretrain")
@click.option(
    "--world",
    "world_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="A folder written by `negclip world make`.",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Where to save the open_clip folder.")
@click.option("--steps", default=None, type=int, help="Training steps (default from PretrainConfig).")
@click.option("--batch-size", default=None, type=int)
@click.option("--lr", default=None, type=float)
@click.option("--seed", default=None, type=int)
@click.option(
    "--cache-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Cache of finished runs [default: ~/.cache/negation-plugins or $NEGATION_PLUGINS_CACHE].",
)
@click.option("--no-cache", is_flag=True, help="Train even if a cached run with the same settings exists.")
@click.option("--threads", default=None, type=int, help="torch CPU threads (default: torch's choice).")
@click.option(
    "--ship",
    is_flag=True,
    help="Maintainers: store the result as the model shipped in the package (negation_plugins/world/base_model).",
)
def pretrain_command(world_dir, out, steps, batch_size, lr, seed, cache_dir, no_cache, threads, ship):
    """Pretrain the tiny base CLIP on affirmative captions, then score it (val R@1 and MCQ) into OUT/result.json."""
    import torch

    from .. import load_clip
    from ..benchmarks.mcq import run_mcq
    from .export import WorldFiles
    from .pretrain import CONFIG_NAME, RESULT_NAME, WEIGHTS_NAME, PretrainConfig, cache_key, pretrain
    from .shipped import ship as ship_model

    if threads:
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = {
        k: v for k, v in {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed}.items() if v is not None
    }
    world = WorldFiles.at(world_dir)
    config = PretrainConfig(**overrides)
    result = pretrain(world, out, config, cache_dir=cache_dir, use_cache=not no_cache)
    if ship:
        result["shipped_as"] = ship_model(out, (CONFIG_NAME, WEIGHTS_NAME, RESULT_NAME), cache_key(world, config))
    clip = load_clip(f"local-dir:{Path(out).resolve()}")
    result["mcq_val"] = run_mcq(clip, world.mcq_csv, world.images)
    result["model"] = f"local-dir:{Path(out).resolve()}"
    atomic_write_text(Path(out) / "result.json", json.dumps(result, indent=2))
    click.echo(json.dumps(result, indent=2))


@hookimpl
def register_commands(cli):
    cli.add_command(world_group)
