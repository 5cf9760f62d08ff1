"""Evaluation reports: JSON (everything), a markdown table and a side-by-side bar plot (models x metrics)."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_write, atomic_write_json
from ..model_card import flatten_results

SPREAD = ("std", "min", "max", "p05", "p25", "p75", "p95", "frac_above_0.95")


def model_label(spec: str) -> str:
    """A short column name: the folder/file name of local specs, the spec itself otherwise."""
    for prefix in ("local-dir:", "hf-hub:"):
        if spec.startswith(prefix):
            return prefix + Path(spec[len(prefix) :].rstrip("/")).name
    return Path(spec).name if ("/" in spec and Path(spec).exists()) else spec


def metric_rows(results: dict) -> list[tuple[str, str]]:
    """Every (benchmark, metric) that is a float in any model's results, in first-seen order."""
    rows = {}
    for per_model in results.values():
        for bench, metrics in flatten_results(per_model).items():
            for metric in metrics:
                rows[(bench, metric)] = None
    return list(rows)


def markdown_table(results: dict) -> str:
    models = list(results)
    flat = {m: flatten_results(results[m]) for m in models}
    lines = [
        "| benchmark | metric | " + " | ".join(model_label(m) for m in models) + " |",
        "|---|---|" + "---:|" * len(models),
    ]
    for bench, metric in metric_rows(results):
        cells = [flat[m].get(bench, {}).get(metric) for m in models]
        lines.append(f"| {bench} | {metric} | " + " | ".join("" if v is None else f"{v:.4f}" for v in cells) + " |")
    return "\n".join(lines) + "\n"


def write_json(path, report: dict) -> Path:
    return atomic_write_json(path, report, indent=2)


def write_markdown(path, results: dict) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(markdown_table(results), encoding="utf-8"))


def write_plot(path, results: dict) -> Path:
    """Grouped bars: one group per headline metric (distribution spreads left out), one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results)
    flat = {m: flatten_results(results[m]) for m in models}
    rows = [(b, k) for b, k in metric_rows(results) if k.rsplit(".", 1)[-1] not in SPREAD]
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(rows) * max(1, len(models)) + 2), 4.5))
    for i, model in enumerate(models):
        values = [flat[model].get(b, {}).get(k, float("nan")) for b, k in rows]
        ax.bar(
            [r + (i - (len(models) - 1) / 2) * width for r in range(len(rows))], values, width, label=model_label(model)
        )
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(
        [f"{b}\n{k}" + (" (lower = better)" if b == "negation-probe" else "") for b, k in rows],
        rotation=45,
        ha="right",
        fontsize=8,
    )
    ax.set_ylabel("score")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_title("negclip eval")
    ax.legend(fontsize=8)
    fig.tight_layout()

    def write(tmp):
        fig.savefig(tmp, format="png", dpi=100)

    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)
