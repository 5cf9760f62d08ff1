"""Trainer commands: ``negclip demo`` (the one-command story), ``negclip finetune`` (the trainer's flags) and
``negclip world pretrain`` (the world's base model; joins the library's ``negclip world`` group) and
``negclip recipes`` (the named presets with each value's source)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from negation_plugins.checks import OutputPath
from negation_plugins.hookspecs import hookimpl
from negation_plugins.world.commands import world_group

from .pretrain_world import PretrainConfig, pretrain


@click.command(
    "demo",
    help=(
        "Make the world, pretrain (or reuse) its CLIP, generate negations, LoRA-fine-tune, evaluate before/after.\n\n"
        "Writes results.json (with each stage's wall time), before_after.png and README.md (model card) into OUTPUT. "
        f"The base model ({PretrainConfig.steps} pretraining steps by default) ships with the package for the default "
        "world and seed (sha256-checked) and is cached otherwise, so only other settings pretrain."
    ),
)
@click.option(
    "--output",
    default="negclip-demo",
    show_default=True,
    type=OutputPath(folder=True),
    help="Folder for the world, base model, records, fine-tuned model, results, plot and card.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--images", "n_images", default=2000, show_default=True, type=click.IntRange(min=2), help="Scenes in the world."
)
@click.option(
    "--pretrain-steps",
    default=PretrainConfig.steps,
    show_default=True,
    type=click.IntRange(min=1),
    help="Base model training steps.",
)
@click.option(
    "--max-steps",
    default=None,
    type=click.IntRange(min=1),
    help="Fine-tuning steps [default: the world recipe's 5 epochs].",
)
@click.option("--no-cache", is_flag=True, help="Retrain the base model even if a cached one exists.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def demo_command(output, seed, n_images, pretrain_steps, max_steps, no_cache, no_progress):
    from .config import ConfigError
    from .demo import run_demo

    try:
        results = run_demo(
            output,
            seed=seed,
            n_images=n_images,
            pretrain_steps=pretrain_steps,
            max_steps=max_steps,
            use_cache=not no_cache,
            progress=not no_progress,
        )
    except (ConfigError, ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from None
    before, after = results["before"]["mcq"], results["after"]["mcq"]
    click.echo(f"{'MCQ (held-out scenes)':<36}{'before':>8}{'after':>8}")
    for key in ("accuracy", "affirmation", "negation", "hybrid"):
        click.echo(f"{key:<36}{before[key]:>8.3f}{after[key]:>8.3f}")
    for split, name in (("train", "seen"), ("held-out", "held-out")):
        for key in ("accuracy", "negation", "hybrid") if split in before.get("by_phrasing_split", {}) else ():
            b, a = before["by_phrasing_split"][split][key], after["by_phrasing_split"][split][key]
            click.echo(f"{key + ', ' + name + ' phrasings':<36}{b:>8.3f}{a:>8.3f}")
    click.echo("affirmative R@1 retained (after / before): " + json.dumps(results["affirmative_retrieval_retained"]))
    click.echo(f"wrote {output}/results.json, {output}/before_after.png, {output}/README.md, model in {output}/model")


@click.command(
    "finetune", context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}
)
@click.pass_context
def finetune_command(ctx):
    """Fine-tune a CLIP text encoder (same flags as `python -m trainers.finetune`; see `negclip finetune --help`).

    For several processes use `accelerate launch -m trainers.finetune ...`.
    """
    from .finetune import main

    ctx.exit(main(list(ctx.args)))


@click.command("recipes")
@click.argument("name", required=False)
def recipes_command(name):
    """List the `--recipe` presets: every value with the paper or public-code file it comes from."""
    from .recipes import RECIPES

    if name and name not in RECIPES:
        raise click.ClickException(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    for recipe in [RECIPES[name]] if name else RECIPES.values():
        click.echo(f"{recipe.name}: {recipe.description}")
        for key, (value, source) in recipe.settings.items():
            shown = " + ".join(value) if isinstance(value, list) else value
            click.echo(f"  --{key.replace('_', '-'):<16} {str(shown):<28} {source}")
        for note in recipe.notes:
            click.echo(f"  note: {note}")
        click.echo("")


@click.command(name="pretrain")
@click.option(
    "--world",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="A folder written by `negclip world make`.",
)
@click.option("--out", required=True, type=OutputPath(folder=True), help="Where to save the open_clip folder.")
@click.option(
    "--steps", default=PretrainConfig.steps, show_default=True, type=click.IntRange(min=1), help="Training steps."
)
@click.option("--batch-size", default=PretrainConfig.batch_size, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=PretrainConfig.lr, show_default=True, help="Peak learning rate (warmup, cosine decay).")
@click.option("--seed", default=PretrainConfig.seed, show_default=True)
@click.option(
    "--web-negation-share",
    default=PretrainConfig.web_negation_share,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of caption draws that are a true negation in any phrasing family (web captions rarely negate).",
)
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
def world_pretrain_command(
    world, out, steps, batch_size, lr, seed, web_negation_share, cache_dir, no_cache, threads, ship
):
    """Pretrain the tiny base CLIP on affirmative captions (and rare web negations), then score it (val R@1 and MCQ)
    into OUT/result.json."""
    import torch

    from negation_plugins import load_clip
    from negation_plugins.atomic import atomic_write_json
    from negation_plugins.benchmarks.mcq import run_mcq
    from negation_plugins.world.export import WorldFiles
    from negation_plugins.world.shipped import OPEN_CLIP_FILES
    from negation_plugins.world.shipped import ship as ship_model

    from .pretrain_world import RESULT_NAME, cache_key

    if threads:
        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = PretrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, web_negation_share=web_negation_share)
    try:
        world = WorldFiles.at(world)
    except FileNotFoundError as err:  # a folder, but not a world's
        raise click.BadParameter(str(err), param_hint="'--world'") from None
    result = pretrain(world, out, config, cache_dir=cache_dir, use_cache=not no_cache)
    if ship:
        result["shipped_as"] = ship_model(
            out, (*OPEN_CLIP_FILES, RESULT_NAME), cache_key(world, config), kind=world.kind
        )
    clip = load_clip(f"local-dir:{Path(out).resolve()}")
    result["mcq_val"] = run_mcq(clip, world.mcq_csv, world.images)
    result["model"] = f"local-dir:{Path(out).resolve()}"
    atomic_write_json(Path(out) / "result.json", result, indent=2)
    click.echo(json.dumps(result, indent=2))


@hookimpl
def register_commands(cli):
    cli.add_command(demo_command)
    cli.add_command(finetune_command)
    cli.add_command(recipes_command)
    world_group.add_command(world_pretrain_command)
