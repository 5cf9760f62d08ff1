"""Foundation commands: ``negclip convert``."""

from __future__ import annotations

from pathlib import Path

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
@click.option("--overwrite", is_flag=True, help="Replace DST if it exists (never SRC itself).")
@click.option(
    "--text-heads",
    type=click.IntRange(min=1),
    default=None,
    help="OpenAI-format SRC: text attention heads (weights cannot tell; default: 64-wide heads, as OpenAI).",
)
@click.option("--vision-heads", type=click.IntRange(min=1), default=None, help="OpenAI-format SRC: vision heads.")
@click.option(
    "--activation",
    type=click.Choice(["quick_gelu", "gelu"]),
    default=None,
    help="OpenAI-format SRC: MLP activation (default: quick_gelu, as OpenAI).",
)
def convert_command(src, dst, target, kind, backend, overwrite, text_heads, vision_heads, activation):
    """Convert any CLIP that `load_clip` reads (SRC) into a transformers or open_clip folder (DST).

    The conversion is exact and checked: both models run on the same inputs before anything is written.
    """
    from . import checks
    from .atomic import check_replaceable
    from .convert import ConversionError, save_open_clip, save_transformers
    from .factory import load_clip

    checks.output_dir(dst, "DST")
    src_path = Path(src.split(":", 1)[1] if src.startswith(("local-dir:", "openai:")) else src).expanduser()
    if src_path.exists() and (
        src_path.resolve() == Path(dst).resolve() or Path(dst).resolve() in src_path.resolve().parents
    ):
        raise checks.BadInputError(
            f"DST {dst} is or contains SRC {src}: converting in place would delete the source; write to a new folder"
        )
    try:
        check_replaceable(dst, overwrite)
    except FileExistsError as err:
        raise checks.BadInputError(f"DST {err}") from None
    options = {
        name: value
        for name, value in (("text_heads", text_heads), ("vision_heads", vision_heads), ("activation", activation))
        if value is not None
    }
    try:
        bundle = load_clip(src, backend=backend, **options)
    except TypeError as err:
        if not options:
            raise
        flags = ", ".join("--" + name.replace("_", "-") for name in options)
        raise click.ClickException(f"{flags} apply only to OpenAI-format state dicts, not to {src} ({err})") from None
    except (ConversionError, ValueError, FileNotFoundError, KeyError) as err:
        raise click.ClickException(str(err)) from None
    if bundle.info.get("assumed"):
        click.echo(f"note: {src}: {bundle.info['assumed']}", err=True)
    try:
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
