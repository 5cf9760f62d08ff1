"""``negclip app``: serve the page, or write it out as a Hugging Face Space folder (``--export-space``)."""

from __future__ import annotations

import click

from ..checks import OutputPath
from ..hookspecs import hookimpl


@click.command(name="app")
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME",
    help="A model to compare (any load_clip name; repeat). Default: the synthetic world's base model and the model "
    "`negclip demo` fine-tuned, with held-out world scenes as examples.",
)
@click.option(
    "--pipeline",
    default=None,
    metavar="NAME",
    help="A diffusers Stable Diffusion 1.x/2.x/SDXL pipeline (Hub id or folder): enables the Generate tab.",
)
@click.option(
    "--correction",
    "corrections",
    multiple=True,
    metavar="SPEC",
    help="A correction the page offers besides span-subtraction, e.g. steering:FILE (repeat).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
@click.option("--share", is_flag=True, help="Also open a public gradio.live link (off unless given).")
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--export-space",
    "space",
    type=OutputPath(folder=True),
    default=None,
    metavar="DIR",
    help="Write a Hugging Face Space (app.py, requirements.txt, README.md) for --model to DIR instead of serving; "
    "upload it with `negclip push DIR ORG/NAME --repo-type space`.",
)
@click.option(
    "--requirement",
    default=None,
    metavar="SPEC",
    help="--export-space: how the Space installs this package (default: negation-plugins[app]==VERSION; e.g. a git URL).",
)
@click.option("--overwrite", is_flag=True, help="--export-space: replace DIR if it exists.")
def app_command(models, pipeline, corrections, host, port, share, device, space, requirement, overwrite):
    """Serve a web page that compares text encoders on your image and captions, and (with --pipeline) generates one
    prompt with the stock and a negation-aware text encoder.

    Binds 127.0.0.1 only, unless --host says otherwise; a public link only with --share.
    """
    if space is not None:
        from .space import export_space

        if not models:
            raise click.ClickException("--export-space needs at least one --model (the Space's models)")
        try:
            out = export_space(space, models, pipeline, corrections, requirement=requirement, overwrite=overwrite)
        except (ValueError, FileExistsError) as err:
            raise click.ClickException(str(err)) from None
        click.echo(f"wrote a Space to {out}; upload it with: negclip push {out} ORG/NAME --repo-type space")
        return
    try:
        from .page import build_app, serve
    except ImportError as err:
        raise click.ClickException(
            f"negclip app needs the app extra ({err}): pip install 'negation-plugins[app]'"
        ) from None
    from .core import AppError

    try:
        page = build_app(models, pipeline, corrections, device)
    except AppError as err:
        raise click.ClickException(str(err)) from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"note: --host {host}: the page is reachable from other machines", err=True)
    try:
        serve(page, host, port, share)
    except OSError as err:
        raise click.ClickException(f"--port {port}: {err}") from None


@hookimpl
def register_commands(cli):
    cli.add_command(app_command)
