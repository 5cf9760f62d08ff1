"""Trainer commands: ``negclip demo`` (the one-command story) and ``negclip finetune`` (the trainer's flags)."""

from __future__ import annotations

import json

import click

from negation_plugins.hookspecs import hookimpl


@click.command("demo")
@click.option(
    "--output",
    default="negclip-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the world, base model, records, fine-tuned model, results, plot and card.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--images", "n_images", default=2000, show_default=True, type=int, help="Scenes in the world.")
@click.option("--pretrain-steps", default=None, type=int, help="Base model steps (default: the world's 800).")
@click.option("--max-steps", default=None, type=int, help="Fine-tuning steps (default: the trainer's epochs).")
@click.option("--no-cache", is_flag=True, help="Retrain the base model even if a cached one exists.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def demo_command(output, seed, n_images, pretrain_steps, max_steps, no_cache, no_progress):
    """Make the world, pretrain (or reuse) its CLIP, generate negations, LoRA-fine-tune, evaluate before/after.

    Writes results.json, before_after.png and README.md (model card) into OUTPUT; about 5 minutes on 2 CPU cores (the base model ships with the package).
    """
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


@hookimpl
def register_commands(cli):
    cli.add_command(demo_command)
    cli.add_command(finetune_command)
