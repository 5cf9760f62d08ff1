"""Model cards for trained negation-aware CLIPs: README.md with Hub metadata and a before/after results table.

The YAML front matter (library_name, tags, base_model, license, model-index) comes from huggingface_hub's
ModelCardData/EvalResult, so the Hub reads the results: the model-index holds the headline metrics only (MCQ
accuracy, affirmation, negation, hybrid; retrieval R@1; each other benchmark's accuracy), the table in the
text every figure. The numbers behind the table are kept as JSON in an HTML
comment, so :func:`update_model_index` can merge new evaluation results and redraw the table later.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .atomic import atomic_write_text

CARD_FILE = "README.md"
DEFAULT_TAGS = ("clip", "negation", "negation-plugins", "open_clip")
TASK_TYPE = "zero-shot-image-classification"  # the card's pipeline tag: what a CLIP does
# The model-index carries the headline metrics only, each under the task it measures, so the Hub shows a few
# results rather than every per-phrasing figure; those stay in the card's table and the run's results.json.
# A metric is (benchmark test, metric name in the flattened results) -> its display name.
MCQ_TASK = ("multiple-choice", "Negation multiple choice (NegBench MCQ)")
RETRIEVAL_TASK = ("image-text-retrieval", "Image-text retrieval")
CHOICE_TASK = (TASK_TYPE, "Caption or class choice")  # VALSE, CC-Neg, NegRefCOCOg, zero-shot: one accuracy each
MCQ_METRICS = {
    "accuracy": "MCQ accuracy",
    "affirmation": "MCQ affirmation accuracy",
    "negation": "MCQ negation accuracy",
    "hybrid": "MCQ hybrid accuracy",
}
RETRIEVAL_METRICS = {"i2t_R@1": "image->text R@1", "t2i_R@1": "text->image R@1"}
RESULTS_START = "<!-- negation-plugins results start -->"
RESULTS_END = "<!-- negation-plugins results end -->"
RESULTS_DATA = re.compile(r"<!-- results-data: (.*?) -->", re.DOTALL)
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def flatten_results(results: dict | None) -> dict[str, dict[str, float]]:
    """``{benchmark: {metric: value | {sub: value}}}`` -> ``{benchmark: {"metric" | "metric.sub": float}}``.

    Only finite floats are metrics: ints are taken as counts (e.g. number of items) and, like bools, strings and
    lists, left out. A flat ``{metric: value}`` is read as one benchmark named "evaluation".
    """
    if not results:
        return {}
    if any(_is_number(v) for v in results.values()):
        results = {"evaluation": results}
    flat = {}
    for benchmark, metrics in results.items():
        if not isinstance(metrics, dict):
            raise TypeError(f"results for benchmark {benchmark!r} must be a dict of metrics, got {metrics!r}")
        values = {}
        _flatten_into(values, "", metrics)
        if values:
            flat[str(benchmark)] = values
    return flat


def _flatten_into(out, prefix, metrics):
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _flatten_into(out, f"{name}.", value)
        elif _is_number(value):
            out[name] = float(value)


def _is_number(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def hub_base_model(base_model: str | None) -> str | None:
    """Only a Hub repo id belongs in ``base_model`` metadata; local paths and open_clip names stay in the text."""
    if not base_model:
        return None
    name = base_model.removeprefix("hf-hub:")
    return name if HUB_ID.match(name) and not Path(base_model).exists() else None


def results_table(before: dict, after: dict) -> str:
    """Markdown table: one row per (benchmark, metric), before / after / change."""
    rows = [
        "| benchmark | metric | before | after | change |",
        "|---|---|---:|---:|---:|",
    ]
    for benchmark in sorted(set(before) | set(after)):
        metrics = sorted(set(before.get(benchmark, {})) | set(after.get(benchmark, {})))
        for metric in metrics:
            old = before.get(benchmark, {}).get(metric)
            new = after.get(benchmark, {}).get(metric)
            change = f"{new - old:+.4f}" if old is not None and new is not None else ""
            rows.append(f"| {benchmark} | {metric} | {_cell(old)} | {_cell(new)} | {change} |")
    return "\n".join(rows)


def _cell(value):
    return "" if value is None else f"{value:.4f}"


def _results_section(before: dict, after: dict) -> str:
    data = json.dumps({"before": before, "after": after}, sort_keys=True).replace(
        "--", "-\\u002d"
    )  # no "--" inside a comment
    table = results_table(before, after) if before or after else "_No evaluation results yet._"
    return f"{RESULTS_START}\n<!-- results-data: {data} -->\n\n{table}\n{RESULTS_END}"


def headline_metrics(after: dict) -> list[tuple[tuple[str, str], str, str, str, float]]:
    """``(task, benchmark, metric, display name, value)`` of the headline metrics in flattened results: MCQ overall
    and per question type from a benchmark named like ``mcq``, Recall@1 both ways from any benchmark, and the overall
    ``accuracy`` of any other benchmark."""
    found = []
    for benchmark, metrics in sorted(after.items()):
        if "mcq" in benchmark:
            found += [(MCQ_TASK, benchmark, m, name, metrics[m]) for m, name in MCQ_METRICS.items() if m in metrics]
        elif "accuracy" in metrics:
            found.append((CHOICE_TASK, benchmark, "accuracy", f"{benchmark} accuracy", metrics["accuracy"]))
        found += [(RETRIEVAL_TASK, benchmark, m, n, metrics[m]) for m, n in RETRIEVAL_METRICS.items() if m in metrics]
    return found


def _eval_results(model_name: str, after: dict):
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type=task_type,
            task_name=task_name,
            dataset_type=benchmark,
            dataset_name=benchmark,
            metric_type=metric,
            metric_name=name,
            metric_value=value,
        )
        for (task_type, task_name), benchmark, metric, name, value in headline_metrics(after)
    ]


def write_model_card(
    out_dir,
    *,
    base_model: str | None,
    results_before: dict | None = None,
    results_after: dict | None = None,
    objectives=(),
    tuning: str | None = None,
    tags=(),
    model_name: str | None = None,
    license: str = "mit",
    library_name: str = "open_clip",
    training: dict | None = None,
    datasets=(),
    description: str | None = None,
) -> Path:
    """Write ``out_dir/README.md`` (atomically) and return its path.

    ``results_*`` map benchmark -> metrics (as returned by ``Benchmark.run``); the model-index carries the
    after-training headline metrics (:func:`headline_metrics`), the table every figure. ``objectives`` are the ``--objective`` specs; ``training`` extra hyperparameters.
    """
    from huggingface_hub import ModelCard, ModelCardData

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_name = model_name or out_dir.resolve().name
    before, after = flatten_results(results_before), flatten_results(results_after)
    card_data = ModelCardData(
        model_name=model_name,
        library_name=library_name,
        license=license,
        base_model=hub_base_model(base_model),
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *tags])),
        datasets=list(datasets) or None,
        pipeline_tag=TASK_TYPE,
        eval_results=_eval_results(model_name, after) or None,
    )
    objectives = list(objectives)
    settings = {
        "base model": base_model or "unknown",
        "objectives": ", ".join(objectives) if objectives else "unknown",
        "tuning": tuning or "unknown",
        **{str(k): v for k, v in (training or {}).items()},
    }
    body = "\n".join(
        [
            f"# {model_name}",
            "",
            description
            or "A CLIP model whose text encoder was fine-tuned with negation-plugins to understand negation "
            '("a dog but no ball"), keeping its affirmative retrieval.',
            "",
            "## Training",
            "",
            *[f"- **{key}**: {value}" for key, value in settings.items()],
            "",
            "## Results (before / after fine-tuning)",
            "",
            _results_section(before, after),
            "",
            "## Usage",
            "",
            "```python",
            "import negation_plugins",
            "",
            'clip = negation_plugins.load_clip("local-dir:PATH_TO_THIS_FOLDER")  # or "hf-hub:ORG/REPO"',
            "```",
            "",
        ]
    )
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")
    path = out_dir / CARD_FILE
    atomic_write_text(path, str(card))
    return path


def update_model_index(card_path, results: dict, results_before: dict | None = None) -> Path:
    """Merge ``results`` (benchmark -> metrics, after training) into an existing card's model-index and table.

    Same (benchmark, metric) pairs are replaced, new ones appended; ``results_before`` updates the before column.
    The model-index keeps the headline metrics of the merged results (and entries of other tools).
    A card written by something else gets the results section appended.
    """
    from huggingface_hub import ModelCard

    card_path = Path(card_path)
    if not card_path.is_file():
        raise FileNotFoundError(f"no model card at {card_path}")
    card = ModelCard.load(card_path)
    before, after = _stored_results(card.text)
    for stored, new in (
        (after, flatten_results(results)),
        (before, flatten_results(results_before)),
    ):
        for benchmark, metrics in new.items():
            stored.setdefault(benchmark, {}).update(metrics)

    model_name = card.data.model_name or card_path.resolve().parent.name
    card.data.model_name = model_name
    kept = [  # results added by other tools stay; ours are redrawn from the merged results
        r for r in (card.data.eval_results or []) if after.get(r.dataset_type, {}).get(r.metric_type) is None
    ]
    card.data.eval_results = kept + _eval_results(model_name, after) or None

    section = _results_section(before, after)
    if RESULTS_START in card.text and RESULTS_END in card.text:
        head, rest = card.text.split(RESULTS_START, 1)
        text = head + section + rest.split(RESULTS_END, 1)[1]
    else:
        text = card.text.rstrip("\n") + "\n\n## Results\n\n" + section + "\n"
    updated = ModelCard(f"---\n{card.data.to_yaml()}\n---\n{text}")
    atomic_write_text(card_path, str(updated))
    return card_path


def _stored_results(text: str) -> tuple[dict, dict]:
    if RESULTS_START not in text:
        return {}, {}
    match = RESULTS_DATA.search(text.split(RESULTS_START, 1)[1])
    if not match:
        return {}, {}
    data = json.loads(match.group(1))
    return data.get("before", {}), data.get("after", {})
