"""Foundation commands: ``negclip convert``."""

from __future__ import annotations

import click

from .hookspecs import hookimpl


@click.command(name="convert")
@click.argument("src")
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--to", "target", type=click.Choice(["transformers", "open_clip"]), required=True, help="Output format.")
@click.option(
    "--kind",
    type=click.Choice(["text", "text_with_projection", "full"]),
    default="full",
    show_default=True,
    help="transformers class: CLIPTextModel, CLIPTextModelWithProjection or CLIPModel.",
)
@click.option("--backend", default=None, help="Force the backend that reads SRC (see `negclip plugins`).")
@click.option("--overwrite", is_flag=True, help="Replace DST if it exists.")
def convert_command(src, dst, target, kind, backend, overwrite):
    """Convert any CLIP that `load_clip` reads (SRC) into a transformers or open_clip folder (DST).

    The conversion is exact and checked: both models run on the same inputs before anything is written.
    """
    from .convert import ConversionError, save_open_clip, save_transformers
    from .factory import load_clip

    try:
        bundle = load_clip(src, backend=backend)
        if target == "transformers":
            out = save_transformers(bundle, dst, kind=kind, overwrite=overwrite)
        else:
            out = save_open_clip(bundle, dst, overwrite=overwrite)
    except (ConversionError, ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        raise click.ClickException(str(err)) from None
    what = f"transformers {kind}" if target == "transformers" else "open_clip"
    click.echo(f"wrote {what} model from {src} ({bundle.info.get('backend', '?')} backend) to {out}")


@hookimpl
def register_commands(cli):
    cli.add_command(convert_command)
