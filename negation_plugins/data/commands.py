"""``negclip generate``: negation records from COCO captions (or a caption table) with any negator/verifier."""

from __future__ import annotations

import inspect
import json
import os
import re

import click

from ..checks import OutputPath, output_file
from ..hookspecs import hookimpl
from ..textfiles import read_text


def _options(pairs: tuple[str, ...], flag: str) -> dict:
    """``key=value`` pairs; values parsed as JSON when they look like it (numbers, true/false), else strings."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=flag)
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = value
    return options


def _build(what: str, plugin_class, options: dict):
    """Instantiate a plugin with its options; a wrong option name is a one-line error naming the plugin."""
    accepted = inspect.signature(plugin_class).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise click.UsageError(
                f"{what} {plugin_class.name!r} has no option(s) {', '.join(unknown)}; "
                f"its options: {', '.join(k for k in accepted if k != 'images')}"
            )
    return plugin_class(**options)


def _shard(value: str | None) -> tuple[int, int]:
    """``I/N`` -> (I, N) with 0 <= I < N; ``auto``: this process's RANK/WORLD_SIZE (torchrun, accelerate launch)."""
    if value is None:
        return (0, 1)
    if value.strip() == "auto":
        try:
            return _shard(f"{os.environ['RANK']}/{os.environ['WORLD_SIZE']}")
        except KeyError:
            raise click.BadParameter("'auto' needs RANK and WORLD_SIZE (set by torchrun / accelerate launch)",
                                     param_hint="'--shard'") from None  # fmt: skip
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if not match or not int(match[1]) < int(match[2]):
        raise click.BadParameter(f"expected I/N with 0 <= I < N (e.g. 0/4) or auto, got {value!r}",
                                 param_hint="'--shard'")  # fmt: skip
    return int(match[1]), int(match[2])


def _summary_lines(summary: dict) -> None:
    line = (
        f"wrote {summary['out']}: {summary.get('absence', 0)} absence + {summary.get('presence', 0)} presence records "
        f"from {summary['captions']} captions in {summary['seconds']} s"
    )
    if "captions_per_second" in summary:
        line += f" ({summary['captions_per_second']} captions/s)"
    if summary.get("fallbacks"):
        line += f"; {summary['fallbacks']} step(s) fell back to templates, listed in {summary['fallbacks_file']}"
    click.echo(line)
    click.echo(json.dumps(summary, sort_keys=True))


class _GenerateGroup(click.Group):
    """``negclip generate [OPTIONS]`` runs; ``negclip generate merge ...`` is a subcommand."""

    def parse_args(self, ctx, args):
        if not (args and args[0] in self.commands):
            return super().parse_args(ctx, args)
        required = [p for p in self.params if p.required]  # the subcommand has its own; the run's are not needed
        for param in required:
            param.required = False
        try:
            return super().parse_args(ctx, args)
        finally:
            for param in required:
                param.required = True


@click.group("generate", cls=_GenerateGroup, invoke_without_command=True)
@click.option(
    "--captions",
    type=click.Path(exists=True, dir_okay=False),
    help="COCO captions JSON, or JSONL/CSV of image,caption (or give --shards).",
)
@click.option(
    "--shards",
    metavar="PATTERN",
    help="img2dataset webdataset shards by brace pattern ('cc12m-{00000..02175}.tar') instead of --captions: "
    "writes, per shard, OUT_DIR/NAME.negations.jsonl and OUT_DIR/NAME.tar (the samples with their negations in "
    "each json, for `--train OUT_DIR/...tar` patterns); resumes at the first unfinished shard.",
)
@click.option("--out-dir", type=OutputPath(folder=True), help="Output folder for --shards.")
@click.option(
    "--instances",
    type=click.Path(exists=True, dir_okay=False),
    help="COCO instances JSON: ground-truth objects per image.",
)
@click.option(
    "--images",
    type=click.Path(file_okay=False),
    help="Image folder (records name files relative to it); with --captions.",
)
@click.option("--out", type=OutputPath(), help="Output: .jsonl records, or .json in NegationCLIP's format.")
@click.option("--negator", default="template", show_default=True, help="Negator plugin name.")
@click.option("--negator-option", multiple=True, metavar="KEY=VALUE", help="Option for the negator (repeatable).")
@click.option(
    "--verifier", default=None, help="Absence verifier plugin ('annotations' when --instances is given, else none)."
)
@click.option("--verifier-option", multiple=True, metavar="KEY=VALUE", help="Option for the verifier (repeatable).")
@click.option(
    "--kinds", default=None, help="Comma-separated: absence,presence (default: both with --instances, else absence)."
)
@click.option(
    "--vocabulary",
    type=click.Path(exists=True, dir_okay=False),
    help="Object names, one per line (default: instances categories, else COCO's 80).",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--chunk-size", default=256, show_default=True, type=click.IntRange(min=1), help="Captions per resumable chunk."
)
@click.option("--skip-bad-images", is_flag=True, help="Skip (and count) captions whose image is missing or corrupt.")
@click.option("--overwrite", is_flag=True, help="Replace OUT and any unfinished run's progress instead of resuming.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--shard",
    default=None,
    metavar="I/N|auto",
    help="Process only the I-th of N shards (0-based; whole chunks; auto: RANK/WORLD_SIZE of torchrun or accelerate "
    "launch, with --out containing {shard}); join them with `negclip generate merge`. With --shards: every N-th "
    "input shard from the I-th.",
)
@click.pass_context
def generate_command(ctx, captions, shards, out_dir, instances, images, out, negator, negator_option, verifier,
                     verifier_option, kinds, vocabulary, seed, chunk_size, skip_bad_images, overwrite, no_progress,
                     shard):  # fmt: skip
    """Generate negated captions (absence: stays true; presence: becomes false) as JSONL records."""
    if ctx.invoked_subcommand is not None:
        return
    if shards is not None:
        if captions or out or images or instances:
            raise click.UsageError("--shards goes with --out-dir, not with --captions/--images/--instances/--out")
        if out_dir is None:
            raise click.UsageError("--shards needs --out-dir (a folder for the negated shards)")
    else:
        missing = [
            flag for flag, value in (("--captions", captions), ("--images", images), ("--out", out)) if not value
        ]
        if missing:
            raise click.UsageError(f"missing option(s) {', '.join(missing)} (or give --shards and --out-dir)")
    shard_spec, shard, out = shard, _shard(shard), str(out)
    if shards is None and "{shard}" in out:
        out = out.replace("{shard}", str(shard[0]))
        output_file(out, "--out")  # this shard's own file (--out itself was checked as it was parsed)
    elif shards is None and shard_spec == "auto" and shard[1] > 1:
        raise click.BadParameter("with --shard auto, put {shard} in the name (e.g. parts/negations-{shard}.jsonl) so "
                                 "each process writes its own file", param_hint="'--out'")  # fmt: skip
    from .. import plugins
    from .generate import generate, generate_shards
    from .io import DataError, read_captions
    from .llm import LlmError
    from .vocabulary import COCO_CATEGORIES

    try:
        if vocabulary:
            words = [w.strip().lower() for w in read_text(vocabulary).splitlines()]
            vocab = list(dict.fromkeys(w for w in words if w))
            if not vocab:
                raise DataError(f"--vocabulary {vocabulary}: no object names in it (expected one per line)")
        caption_set = None if shards else read_captions(captions, instances, images, skip_bad_images)
        if not vocabulary:
            vocab = (caption_set.categories if caption_set else None) or list(COCO_CATEGORIES)
        kind_list = [k.strip() for k in kinds.split(",")] if kinds else (
            ["absence", "presence"] if instances else ["absence"])  # fmt: skip
        negator_options = _options(negator_option, "--negator-option")
        verifier_options = _options(verifier_option, "--verifier-option")
        negator_obj = _build("negator", plugins.get_one("negators", negator), negator_options)
        verifier_name = verifier if verifier is not None else ("annotations" if instances else "none")
        verifier_obj = None
        if verifier_name != "none":
            verifier_class = plugins.get_one("verifiers", verifier_name)
            defaults = {"images": images}
            if "cache" in inspect.signature(verifier_class).parameters:  # reruns and resumes ask nothing twice
                defaults["cache"] = f"{out_dir}/verdicts.sqlite" if shards else f"{out}.verdicts.sqlite"
            verifier_obj = _build("verifier", verifier_class, {**defaults, **verifier_options})
        elif verifier_options:
            raise click.UsageError("--verifier-option given but no verifier is used (pass --verifier NAME)")
        settings = {"overwrite": overwrite, "progress": not no_progress, "shard": shard,
                    "options": {"negator": negator_options, "verifier": verifier_options}}  # fmt: skip
        if shards:
            summary = generate_shards(shards, out_dir, negator_obj, verifier_obj, kind_list, vocab, seed, chunk_size,
                                      **settings)  # fmt: skip
            click.echo(f"wrote {summary.get('shards', 0)} negated shard(s) to {out_dir} ({summary['shards_done_before']}"
                       f" done before, {summary['shards_mine']} of {summary['shards_total']} for this process)")  # fmt: skip
            click.echo(json.dumps(summary, sort_keys=True))
            return
        summary = generate(caption_set, out, negator_obj, verifier_obj, kind_list, vocab, seed, chunk_size, **settings)
    except (DataError, LlmError, FileExistsError, KeyError, ValueError, TypeError) as e:
        raise click.ClickException(str(e.args[0]) if isinstance(e, KeyError) else str(e)) from None
    _summary_lines(summary)


@generate_command.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=OutputPath(), help="The joined output (.jsonl or .json).")
@click.option("--overwrite", is_flag=True, help="Replace OUT.")
def merge_command(shards, out, overwrite):
    """Join the outputs of `negclip generate --shard I/N` (all N) into the file an unsharded run writes."""
    from .generate import merge_shards
    from .io import DataError

    try:
        summary = merge_shards(shards, out, overwrite=overwrite)
    except (DataError, FileExistsError) as e:
        raise click.ClickException(str(e)) from None
    _summary_lines(summary)


@hookimpl
def register_commands(cli):
    cli.add_command(generate_command)
