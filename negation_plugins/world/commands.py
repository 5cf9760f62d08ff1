"""``negclip world make``: build the synthetic world. (``negclip world pretrain``, its base model, is training code:
it lives in ``trainers`` and joins this group from ``trainers.commands``.)"""

from __future__ import annotations

import json

import click

from ..hookspecs import hookimpl
from .kinds import DEFAULT_WORLD, WORLDS


@click.group(name="world")
def world_group():
    """The synthetic negation world: rendered scenes exported as COCO + NegBench files, and its base CLIP."""


@world_group.command(name="make")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the world into.")
@click.option("--n-images", default=2000, show_default=True, help="Scenes in total (train + val).")
@click.option("--seed", default=0, show_default=True)
@click.option("--image-size", default=32, show_default=True, type=click.IntRange(min=8), help="Image side in pixels.")
@click.option("--val-fraction", default=0.1, show_default=True, help="Share of scenes held out (val MCQ/retrieval).")
@click.option(
    "--kind",
    default=DEFAULT_WORLD,
    show_default=True,
    type=click.Choice(list(WORLDS)),
    help="Which world: shapes (where settings are chosen) or icons (a different world, for reporting only).",
)
def make_command(out, n_images, seed, image_size, val_fraction, kind):
    """Render scenes and write images/, captions_*.json, instances_*.json, mcq_*.csv and world.json."""
    from ..checks import output_dir
    from .export import WorldConfig, make_world

    output_dir(out, "--out")
    config = WorldConfig(n_images=n_images, seed=seed, image_size=image_size, val_fraction=val_fraction, kind=kind)
    try:
        files = make_world(out, config)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    manifest = json.loads((files.root / "world.json").read_text())
    click.echo(
        json.dumps(
            {
                "world": str(files.root),
                "kind": files.kind,
                "n_train": manifest["n_train"],
                "n_val": manifest["n_val"],
                "mcq_csv": str(files.mcq_csv),
                "captions": str(files.captions),
            },
            indent=2,
        )
    )


@hookimpl
def register_commands(cli):
    cli.add_command(world_group)
