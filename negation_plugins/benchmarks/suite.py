"""The evaluation suite: registers the public negation benchmarks and retention checks, and ``negclip eval``.

``evaluate(models, benches, options)`` is the library entry point; the command adds reports, a plot and
model-card metadata around it. One text-embedding cache and one image-embedding cache are shared by every model
and benchmark of a run: models with the same vision tower (a base model and its text-only fine-tunes) embed each
image once, and never again across runs when the caches live on disk (``--cache-dir``).
"""

from __future__ import annotations

import inspect
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import click
import torch

from ..checks import OutputPath
from ..corrections import parse_corrections
from ..devices import pick_device
from ..factory import ClipBundle
from ..hookspecs import hookimpl
from .ccneg import CCNeg
from .common import BenchmarkDataError, Encoder, ImageEmbeddingCache, TextEmbeddingCache
from .negbench import NegBenchRetrieval
from .negrefcocog import NegRefCOCOg
from .probe import NegationProbe
from .retention import CocoRetrieval, ZeroShotClassification
from .valse import ValseExistence

BENCHMARKS = (
    NegBenchRetrieval,
    CCNeg,
    ValseExistence,
    NegRefCOCOg,
    ZeroShotClassification,
    CocoRetrieval,
    NegationProbe,
)
SHARED_OPTIONS = ("skip_bad", "encoder", "batch_size", "progress")  # given to every benchmark that accepts them
PRECISIONS = {"bf16": "bfloat16", "fp32": "float32"}


def pick_eval_device(device: str | None, precision: str | None, what: str = "negclip eval") -> tuple[str, str]:
    """``(device, precision)``: CUDA in bf16 when present, else the CPU in fp32, unless given."""
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"{what}: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device, dtype = pick_device(device, PRECISIONS.get(precision), what)
    return device, {v: k for k, v in PRECISIONS.items()}[str(dtype).removeprefix("torch.")]


def default_workers(device: str) -> int:
    """Decoding workers when the user gives none: up to 8 beside a GPU; none on the CPU, whose cores the model
    already uses."""
    return min(8, os.cpu_count() or 1) if str(device).startswith("cuda") else 0


@hookimpl
def register_benchmarks(register):
    for benchmark in BENCHMARKS:
        register(benchmark())


def parse_options(pairs, benches) -> dict[str, dict]:
    """``["bench.key=value", "key=value"]`` -> ``{bench: {key: value}}``; values are JSON when they parse as JSON
    (numbers, true/false, lists), strings otherwise; a key without ``bench.`` goes to every selected benchmark."""
    options = {b: {} for b in benches}
    for pair in pairs:
        target, sep, raw = pair.partition("=")
        if not sep or not target:
            raise ValueError(f"option {pair!r} must look like bench.key=value")
        bench, dot, key = target.rpartition(".")
        if dot and bench not in options:
            raise ValueError(f"option {pair!r} names benchmark {bench!r}, which is not selected ({', '.join(benches)})")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        for name in [bench] if dot else benches:
            options[name][key] = value
    return options


def _call_options(benchmark, options: dict, shared: dict) -> dict:
    """Options the benchmark's ``run`` accepts, with a clear error for unknown or missing ones."""
    params = dict(list(inspect.signature(benchmark.run).parameters.items())[1:])
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [k for k in options if k not in params and not takes_any]
    accepted = [k for k in params if k not in SHARED_OPTIONS and params[k].kind is not params[k].VAR_KEYWORD]
    if unknown:
        raise ValueError(
            f"benchmark {benchmark.name!r} has no option(s) {', '.join(unknown)}; options: {', '.join(accepted)}"
        )
    missing = [k for k in accepted if params[k].default is inspect.Parameter.empty and k not in options]
    if missing:
        hint = " ".join(f"--option {benchmark.name}.{k}=VALUE" for k in missing)
        raise ValueError(f"benchmark {benchmark.name!r} needs option(s) {', '.join(missing)}: pass {hint}")
    extra = {k: v for k, v in shared.items() if k in params}
    return {**extra, **options}


def evaluate(
    models: Iterable[str | ClipBundle],
    benches: Sequence[str],
    options: dict[str, dict] | None = None,
    *,
    cache: TextEmbeddingCache | None = None,
    image_cache: ImageEmbeddingCache | None = None,
    batch_size: int = 64,
    skip_bad: bool = False,
    progress: bool = True,
    device: str | None = None,
    precision: str | None = None,
    workers: int | None = None,
    backend: str | None = None,
    corrections: Sequence[str] | None = None,
    on_result: Callable[[str, str, dict], None] | None = None,
) -> dict:
    """Run every benchmark on every model (a spec or a loaded :class:`ClipBundle`); with ``corrections`` (specs of
    :mod:`negation_plugins.corrections`), each model is scored as is and again with them stacked on.
    ``device``/``precision`` (``bf16``/``fp32``) default to CUDA in bf16 when present, else the CPU in fp32;
    ``workers`` decode images (default: :func:`default_workers`).

    Returns ``{"results": {model: {bench: metrics}}, "seconds": {model: {bench: s}}}``.
    """
    from .. import plugins
    from ..factory import load_clip

    options = options or {b: {} for b in benches}
    device, precision = pick_eval_device(device, precision)
    workers = default_workers(device) if workers is None else int(workers)
    image_cache = image_cache if image_cache is not None else ImageEmbeddingCache()
    dtype = getattr(torch, PRECISIONS[precision])
    chosen = {b: plugins.get_one("benchmarks", b) for b in benches}
    results, seconds = {}, {}
    loaded = (
        model if isinstance(model, ClipBundle) else load_clip(model, device=device, backend=backend) for model in models
    )
    variants = ([clip, clip.with_corrections(corrections)] if corrections else [clip] for clip in loaded)
    for clip in (variant for pair in variants for variant in pair):
        encoder = Encoder(clip, cache, batch_size, progress, image_cache=image_cache, workers=workers, dtype=dtype)
        shared = {"skip_bad": skip_bad, "encoder": encoder, "batch_size": batch_size, "progress": progress}
        results[clip.spec], seconds[clip.spec] = {}, {}
        for name, benchmark in chosen.items():
            call = _call_options(benchmark, options.get(name, {}), shared)
            start = time.perf_counter()
            try:
                metrics = benchmark.run(clip, **call)
            except (ValueError, FileNotFoundError) as err:  # includes other plugins' data errors
                raise BenchmarkDataError(f"benchmark {name!r} on {clip.spec}: {err}") from None
            except TypeError as err:  # a **options benchmark refusing an option only it could check
                raise BenchmarkDataError(f"benchmark {name!r}: bad option(s) {sorted(call)}: {err}") from None
            seconds[clip.spec][name] = round(time.perf_counter() - start, 3)
            results[clip.spec][name] = metrics
            if on_result is not None:
                on_result(clip.spec, name, metrics)
        if cache is not None:
            cache.save()
        image_cache.save()
    return {"results": results, "seconds": seconds}


@click.command(name="eval")
@click.argument("models", nargs=-1, required=True)
@click.option(
    "--bench", "benches", multiple=True, required=True, help="Benchmark name(s), comma-separated or repeated."
)
@click.option(
    "--option",
    "-o",
    "option_pairs",
    multiple=True,
    metavar="BENCH.KEY=VALUE",
    help="A benchmark option, e.g. ccneg.file=ccneg.pt (KEY=VALUE alone: every benchmark).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=OutputPath(folder=True),
    help="Folder for report.json, results.md, results.png.",
)
@click.option(
    "--cache-dir",
    type=OutputPath(folder=True),
    default=None,
    help="Keep text and image embeddings on disk here across runs (images keyed by the vision tower: a text-only "
    "fine-tune reuses its base model's).",
)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default=None, help="Where the models run [default: cuda when present, else cpu].")
@click.option(
    "--precision",
    type=click.Choice(list(PRECISIONS)),
    default=None,
    help="bf16 runs the models under bfloat16 autocast [default: bf16 on cuda, fp32 on cpu].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="DataLoader processes decoding images [default: up to 8 on cuda, 0 on cpu].",
)
@click.option("--backend", default=None, help="Force the backend that loads the models (see `negclip plugins`).")
@click.option(
    "--skip-bad", is_flag=True, help="Skip missing images / malformed rows and count them, instead of stopping."
)
@click.option(
    "--model-card",
    type=OutputPath(exists=True),
    default=None,
    help="Write results into this model card's model-index (last model; the first model is 'before').",
)
@click.option(
    "--correction",
    "corrections",
    multiple=True,
    metavar="SPEC",
    help="Also score each model with this training-free correction stacked on (repeat to stack several), "
    "e.g. span-subtraction:scale=1.9 or steering:FILE (see `negclip corrections fit`).",
)
@click.option("--no-plot", is_flag=True, help="Skip results.png.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_command(
    models,
    benches,
    option_pairs,
    out_dir,
    cache_dir,
    batch_size,
    device,
    precision,
    workers,
    backend,
    skip_bad,
    model_card,
    corrections,
    no_plot,
    quiet,
):
    """Score one or more MODELS on negation benchmarks and retention checks; compare them side by side.

    Example: negclip eval ViT-B-32:openai local-dir:./tuned --bench valse-existence,negation-probe
    -o valse-existence.file=existence.json -o valse-existence.images=coco/val2014 --out eval/
    """
    from .. import plugins
    from . import report

    names = [b.strip() for group in benches for b in group.split(",") if b.strip()]
    available = plugins.get("benchmarks")
    unknown = [b for b in names if b not in available]
    if unknown:
        raise click.UsageError(f"unknown benchmark(s) {', '.join(unknown)}; registered: {', '.join(available)}")
    try:
        options = parse_options(option_pairs, names)
        for name in names:  # check options before loading any model
            _call_options(available[name], options[name], {})
        parse_corrections(corrections)  # a bad spec or steering file fails before any model loads
    except ValueError as err:
        raise click.UsageError(str(err)) from None

    cache, image_cache = TextEmbeddingCache(cache_dir), ImageEmbeddingCache(cache_dir)
    device, precision = pick_eval_device(device, precision)
    workers = default_workers(device) if workers is None else workers

    def show(model, bench, metrics):
        flat = {k: v for k, v in metrics.items() if isinstance(v, float)}
        click.echo(f"{model}  {bench}: " + ", ".join(f"{k}={v:.4f}" for k, v in flat.items()), err=True)

    try:
        run = evaluate(
            models,
            names,
            options,
            cache=cache,
            image_cache=image_cache,
            batch_size=batch_size,
            skip_bad=skip_bad,
            progress=not quiet,
            device=device,
            precision=precision,
            workers=workers,
            backend=backend,
            corrections=list(corrections),
            on_result=show,
        )
    except (BenchmarkDataError, FileNotFoundError, ValueError, KeyError) as err:
        raise click.ClickException(str(err)) from None

    out = Path(out_dir)
    full = {
        "models": list(run["results"]),
        "benchmarks": names,
        "options": options,
        **run,
        "settings": {"device": device, "precision": precision, "workers": workers, "batch_size": batch_size},
        "text_cache": cache.stats(),
        "image_cache": image_cache.stats(),
    }
    written = [report.write_json(out / "report.json", full), report.write_markdown(out / "results.md", run["results"])]
    if not no_plot:
        written.append(report.write_plot(out / "results.png", run["results"]))
    if model_card:
        from ..model_card import update_model_index

        specs = list(run["results"])[:: 2 if corrections else 1]  # the card describes the weights, uncorrected
        before = run["results"][specs[0]] if len(specs) > 1 else None
        written.append(update_model_index(model_card, run["results"][specs[-1]], results_before=before))
    click.echo(report.markdown_table(run["results"]), nl=False)
    click.echo("wrote " + ", ".join(str(p) for p in written))


@hookimpl
def register_commands(cli):
    cli.add_command(eval_command)
