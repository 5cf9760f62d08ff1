"""Foundation commands: ``negclip convert``, ``negclip compare`` and ``negclip corrections fit``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .checks import OutputPath
from .corrections import parse_corrections
from .hookspecs import hookimpl


@click.command(name="convert")
@click.argument("src")
@click.argument("dst", type=OutputPath(folder=True))
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


def compare_on_image(clips: dict, image, texts: list[str]) -> dict:
    """Per model: cosine between the image and each text, and the softmax over the texts (CLIP's zero-shot)."""
    import torch

    text_only = [name for name, clip in clips.items() if not clip.has_vision]
    if text_only:
        raise ValueError(f"{', '.join(text_only)}: a text-only model (no vision tower); compare it without --image")
    rows = []
    for name, clip in clips.items():
        with torch.no_grad():
            cosines = (clip.encode_image([image]) @ clip.encode_text(texts).T)[0].cpu()
            probabilities = (clip.logit_scale * cosines).softmax(dim=0)
        rows.append(
            {
                "model": name,
                "probabilities": probabilities.tolist(),
                "cosines": cosines.tolist(),
                "argmax": int(probabilities.argmax()),
                "logit_scale": clip.logit_scale,
            }
        )
    return {"texts": texts, "models": rows}


def compare_texts(clips: dict, texts: list[str]) -> dict:
    """Per model, the cosine between every two texts: a caption and its negation should not be near 1."""
    pairs = [(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))]
    rows = []
    for name, clip in clips.items():
        embeddings = clip.encode_text(texts)
        rows.append({"model": name, "cosines": [float(embeddings[i] @ embeddings[j]) for i, j in pairs]})
    return {"texts": texts, "pairs": pairs, "models": rows}


def compare_probe(clips: dict) -> dict:
    """Per model, the ``negation-probe`` benchmark: built-in captions against their negations."""
    from . import plugins

    probe = plugins.get_one("benchmarks", "negation-probe")
    return {"models": [{"model": name, "probe": probe.run(clip, progress=False)} for name, clip in clips.items()]}


def _legend(result: dict) -> list[str]:
    return [f"[{n}] {row['model']}" for n, row in enumerate(result["models"], start=1)]


def format_image_table(result: dict, image: str) -> str:
    width = max(len("text"), *(len(t) for t in result["texts"]))
    models = range(1, len(result["models"]) + 1)
    lines = [f"image: {image}", *_legend(result), ""]
    lines.append(f"{'':<{width}}" + "".join(f"  {f'[{n}]':<14}" for n in models))
    lines.append(f"{'text':<{width}}" + "".join(f"  {'prob':<5}  {'cosine':>7}" for _ in models))
    for t, text in enumerate(result["texts"]):
        cells = "".join(
            f"  {row['probabilities'][t]:.3f}{'*' if row['argmax'] == t else ' '} {row['cosines'][t]:7.4f}"
            for row in result["models"]
        )
        lines.append(f"{text:<{width}}" + cells)
    lines.append("* the text each model picks for the image (softmax over the texts)")
    return "\n".join(line.rstrip() for line in lines)


def format_text_table(result: dict) -> str:
    labels = [f"{result['texts'][i]}  <->  {result['texts'][j]}" for i, j in result["pairs"]]
    width = max(len(label) for label in labels)
    lines = ["cosine between captions (near 1: the model reads them alike)", *_legend(result), ""]
    lines.append(f"{'':<{width}}" + "".join(f"  {f'[{n}]':>7}" for n in range(1, len(result["models"]) + 1)))
    for p, label in enumerate(labels):
        lines.append(f"{label:<{width}}" + "".join(f"  {row['cosines'][p]:7.4f}" for row in result["models"]))
    return "\n".join(line.rstrip() for line in lines)


def format_probe_table(result: dict) -> str:
    first = result["models"][0]["probe"]
    lines = [
        f"negation probe: cosine between {first['n_pairs']} built-in captions and their negations "
        f"({first.get('negator', 'file')} negator; a bag-of-words model gives ~1.0)",
        *_legend(result),
        "",
        f"{'':<5}{'mean':>8}{'absence':>9}{'presence':>10}{'>0.95':>8}",
    ]
    for n, row in enumerate(result["models"], start=1):
        probe = row["probe"]
        lines.append(
            f"{f'[{n}]':<5}{probe['cosine']['mean']:>8.4f}{probe.get('mean_absence', float('nan')):>9.4f}"
            f"{probe.get('mean_presence', float('nan')):>10.4f}{probe['cosine']['frac_above_0.95']:>8.3f}"
        )
    return "\n".join(lines)


@click.command(name="compare")
@click.argument("models", nargs=-1, required=True)
@click.option("--image", type=click.Path(path_type=Path), default=None, help="Your image (any format PIL reads).")
@click.option("--text", "texts", multiple=True, help="A caption; repeat for each (e.g. one with and one without 'no').")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--correction",
    "corrections",
    multiple=True,
    metavar="SPEC",
    help="Also show each model with this training-free correction stacked on (repeat to stack), "
    "e.g. span-subtraction or steering:FILE.",
)
def compare_command(models, image, texts, as_json, device, corrections):
    """Does my model get "no"? Compare MODELS (any load_clip name, local or Hub) side by side.

    With --image: each model's probabilities (softmax over the --text captions) and cosines, the pick marked.
    Without --image: the cosine between every two --text captions, or with no --text the built-in negation probe.

    Example: negclip compare ViT-B-32:openai hf-hub:jerryray/negationclip/negationclip_ViT-B32.pth
    --image street.jpg --text "a street with cars" --text "a street with no cars"
    """
    from .factory import load_clip

    texts = list(texts)
    if image is not None and len(texts) < 2:
        raise click.ClickException("--image needs at least two --text captions to choose between")
    if image is None and len(texts) == 1:
        raise click.ClickException("give at least two --text captions to compare (e.g. one with and one without 'no')")
    picture = _read_image(image) if image is not None else None
    try:
        parse_corrections(corrections)  # a bad spec fails before any model loads
        clips = {}
        for name in models:
            clip = load_clip(name, device=device)
            clips[name] = clip
            if corrections:
                corrected = clip.with_corrections(corrections)
                clips[corrected.spec] = corrected
        if picture is not None:
            result = compare_on_image(clips, picture, texts) | {"image": str(image)}
            table = format_image_table(result, str(image))
        elif texts:
            result = compare_texts(clips, texts)
            table = format_text_table(result)
        else:
            result = compare_probe(clips)
            table = format_probe_table(result)
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(json.dumps(result, indent=2) if as_json else table)


def _read_image(path: Path):
    from .images import ImageDecodeError, load_rgb

    try:
        return load_rgb(path)
    except ImageDecodeError as err:
        raise click.ClickException(f"--image {err}") from None


@click.group("corrections")
def corrections_group():
    """Training-free corrections of text embeddings (`--correction` of eval/compare, load_clip(correction=))."""


@corrections_group.command("fit")
@click.argument("model")
@click.option("--out", required=True, type=OutputPath(), help="Steering file to write.")
@click.option(
    "--pairs",
    type=click.Path(exists=True, dir_okay=False),
    help="Negation records JSONL (caption, negated_caption) or a TSV of caption<TAB>negation; "
    "default: pairs made by --negator from built-in captions.",
)
@click.option("--negator", default="template", show_default=True, help="Negator plugin making default pairs.")
@click.option("--n-captions", default=500, show_default=True, type=click.IntRange(min=1))
@click.option("--scale", default=1.0, show_default=True, type=float, help="Strength stored in the file.")
@click.option("--seed", default=0, show_default=True, type=int)
def fit_command(model, out, pairs, negator, n_captions, scale, seed):
    """Fit a negation steering direction for MODEL and save it (use it as --correction steering:OUT)."""
    from .benchmarks.probe import negator_pairs, read_pairs
    from .corrections import fit_steering, save_steering
    from .factory import load_clip

    if pairs:
        text_pairs, _ = read_pairs(pairs)
    else:
        text_pairs = negator_pairs(negator, n_captions, seed)[0]
    clip = load_clip(model)
    direction, meta = fit_steering(clip, text_pairs, scale=scale)
    save_steering(out, direction, meta)
    click.echo(f"wrote {out}: direction fitted on {meta['pairs']} pairs, scale {scale:g}, model {meta['model']}")


@hookimpl
def register_commands(cli):
    cli.add_command(convert_command)
    cli.add_command(compare_command)
    cli.add_command(corrections_group)
