"""The generated parts of README.md and docs/: result tables made from committed JSON, the CLI reference made from
the real ``--help`` of every command. Figures in the pages come from here, never from a hand.

    python tools/gen_docs.py           # rewrite every generated block in place
    python tools/gen_docs.py --check   # exit 1 naming each page whose blocks differ from what this makes

A generated block is the text between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in a page;
``BLOCKS[NAME]`` makes it. Sources: experiments/results/*.json (perf/compare_training.py, perf/*.py --json),
experiments/demo/results.json (``negclip demo``), the shipped world base models' pretrain_result.json, the
``negclip`` click group and the trainer's argparse parser.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results"
ROWS = REPO / "experiments" / "rows"
DEMO_RESULTS = REPO / "experiments" / "demo" / "results.json"
WORLD_MODELS = REPO / "negation_plugins" / "world"
PAGES = ("README.md", "docs/*.md")
BLOCK = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)
HEADLINE_FIGURES = (("mcq", "MCQ"), ("affirmation", "affirmation"), ("negation", "negation"), ("hybrid", "hybrid"))
TABLE_FIGURES = (
    *HEADLINE_FIGURES,
    ("seen_mcq", "seen"),
    ("held_out_mcq", "held-out"),
    ("i2t_r1_vs_base", "R@1 vs base"),
)
HEADLINE_ROWS = 5  # plus the base model: the README's table stays within 6 rows
HELP_WIDTH = 100


# ---- experiment results ------------------------------------------------------------------------------------------


def read_results() -> list[dict]:
    """Every compare_training result (``schema`` key), sorted by world then row then steps."""
    results = []
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if "schema" in data and "row" in data:
            results.append({**data, "file": path.name})
    return sorted(results, key=lambda r: (r["world"], r["row"], r["settings"]["steps"] or 0))


def headline_rows() -> list[str]:
    """Rows whose file says ``headline = true``, in file order."""
    import tomllib

    return [p.stem for p in sorted(ROWS.glob("*.toml")) if tomllib.loads(p.read_text()).get("headline")]


def worlds_of(results: list[dict]) -> list[str]:
    """The worlds results exist for, the project's own (shapes) first."""
    return sorted({r["world"] for r in results}, key=lambda w: (w != "shapes", w))


def best_of(results: list[dict], row: str, world: str) -> dict | None:
    """The result of ``row`` on ``world``: the full run (no --steps) if there is one, else the longest short run."""
    mine = [r for r in results if r["row"] == row and r["world"] == world]
    return max(mine, key=lambda r: r["settings"]["steps"] or float("inf"), default=None)


def fmt(stats: dict | None) -> str:
    if stats is None:
        return "-"
    return f"{stats['mean']:.3f}" if stats["std"] == 0 else f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def value(figure: float | None) -> str:
    return "-" if figure is None else f"{figure:.3f}"


def label(result: dict) -> str:
    steps = result["settings"]["steps"]
    return result["description"] + ("" if steps is None else f" ({steps} steps)")


def seeds_note(result: dict | None) -> str:
    if result is None:
        return "-"
    threads = sorted({run["threads"] for run in result["runs"]})
    return f"{len(result['seeds'])} seed{'s' * (len(result['seeds']) > 1)}, {'/'.join(map(str, threads))} thr."


def headline(results: list[dict] | None = None, chosen: list[str] | None = None) -> str:
    """≤ 6 rows: the base model and the headline rows (``headline = true`` in their row file; without any, every row
    with results, up to 5), each world side by side in one cell (``shapes / second world``)."""
    results = read_results() if results is None else results
    if not results:
        return "No experiment results are committed yet (`experiments/results/`).\n"
    worlds = worlds_of(results)
    chosen = headline_rows() if chosen is None else chosen
    rows = [row for row in chosen if any(r["row"] == row for r in results)] or sorted({r["row"] for r in results})
    rows = rows[:HEADLINE_ROWS]
    header = ["", *(name for _, name in HEADLINE_FIGURES), "R@1 vs base", "seeds"]
    lines = [f"Each cell: {' / '.join(f'`{w}`' for w in worlds)} (held-out scenes; mean ± std over seeds).", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cells(per_world: list[dict | None], pick: Callable[[dict], str]) -> list[str]:
        return [" / ".join("-" if r is None else pick(r) for r in per_world)]

    bases = [next((r["base_model"]["figures"] for r in results if r["world"] == w), None) for w in worlds]
    base_cells = [" / ".join(value(None if b is None else b[key]) for b in bases) for key, _ in HEADLINE_FIGURES]
    lines.append("| base model (no fine-tuning) | " + " | ".join([*base_cells, "1.000", "-"]) + " |")
    for row in rows:
        per_world = [best_of(results, row, w) for w in worlds]
        first = next(r for r in per_world if r is not None)
        figure_cells = [cells(per_world, lambda r, key=key: fmt(r["summary"][key]))[0] for key, _ in HEADLINE_FIGURES]
        ratio = cells(per_world, lambda r: fmt(r["summary"]["i2t_r1_vs_base"]))[0]
        seeds = cells(per_world, seeds_note)[0]
        lines.append(f"| {label(first)} | " + " | ".join([*figure_cells, ratio, seeds]) + " |")
    return "\n".join(lines) + "\n"


def results_tables(results: list[dict] | None = None) -> str:
    """Per world: the base model and every result, with its settings and where its JSON is."""
    results = read_results() if results is None else results
    if not results:
        return "No experiment results are committed yet (`experiments/results/`).\n"
    out = []
    header = ["row", "steps", "seeds", *(name for _, name in TABLE_FIGURES), "file"]
    for world in worlds_of(results):
        mine = [r for r in results if r["world"] == world]
        out += [f"### World `{world}`", ""]
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        base = mine[0]["base_model"]["figures"]
        out.append("| base model | - | - | " + " | ".join(value(base[key]) for key, _ in TABLE_FIGURES) + " | - |")
        for result in mine:
            figures = " | ".join(fmt(result["summary"][key]) for key, _ in TABLE_FIGURES)
            steps = result["settings"]["steps"] or "row's epochs"
            out.append(
                f"| {result['row']}: {result['description']} | {steps} | {seeds_note(result)} | {figures} "
                f"| `{result['file']}` |"
            )
        corrected = [(r, name, stats) for r in mine for name, stats in r.get("corrected_summary", {}).items()]
        if corrected:
            out += ["", "With a training-free correction applied at encode time:", ""]
            out += ["| row | correction | " + " | ".join(n for _, n in TABLE_FIGURES) + " |"]
            out += ["|" + "---|" * (len(TABLE_FIGURES) + 2)]
            for result, name, stats in corrected:
                figures = " | ".join(fmt(stats[key]) for key, _ in TABLE_FIGURES)
                out.append(f"| {result['row']} | `{name}` | {figures} |")
        out += ["", "Rerun a row as recorded (each run's exact `command` is in its JSON):", ""]
        out += ["<!-- needs: minutes to hours of CPU per row and seed (training runs) -->", "```bash"]
        for result in mine:
            out.append(reproduce(result))
        out += ["```", ""]
    return "\n".join(out)


def reproduce(result: dict) -> str:
    """The command that reruns ``result``'s row, world, seeds and steps (without the machine's folders)."""
    steps = result["settings"]["steps"]
    parts = ["python perf/compare_training.py", f"--rows {result['row']}", f"--world {result['world']}"]
    parts.append(f"--seeds {','.join(map(str, result['seeds']))}")
    if steps is not None:
        parts.append(f"--steps {steps}")
    threads = sorted({run["threads"] for run in result["runs"]})
    parts.append(f"--threads {threads[0]}")
    return " ".join(parts)


# ---- the demo, the world base models, perf benchmarks --------------------------------------------------------------


def demo_table() -> str:
    """Base vs fine-tuned from the committed results.json of ``negclip demo``."""
    path = DEMO_RESULTS
    if not path.is_file():
        return "No demo results are committed yet (`experiments/demo/results.json`).\n"
    data = json.loads(path.read_text(encoding="utf-8"))
    before, after = data["before"], data["after"]
    keys = [("accuracy", "MCQ"), ("affirmation", "affirmation"), ("negation", "negation"), ("hybrid", "hybrid")]
    split = "by_phrasing_split" in before["mcq"]
    header = ["", *(n for _, n in keys), *(["seen", "held-out"] if split else []), "image->text R@1"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, scores in (("base model", before), ("fine-tuned (demo)", after)):
        mcq = scores["mcq"]
        cells = [value(mcq[key]) for key, _ in keys]
        if split:
            cells += [value(mcq["by_phrasing_split"][s]["accuracy"]) for s in ("train", "held-out")]
        cells.append(value(scores["retrieval"]["i2t_R@1"]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    training, finetune = data["training"], data["settings"]["finetune"]
    lines += [
        "",
        f"`--recipe {finetune['recipe']}`, {finetune['tuning']} tuning, objectives "
        f"{', '.join(f'`{o}`' for o in finetune['objective'])}, lr {finetune['lr']}, batch {finetune['batch_size']}, "
        f"seed {finetune['seed']}: {training['steps']} steps, {training['train_seconds']:.0f} s of training; "
        "stage times (s): " + ", ".join(f"{k} {v}" for k, v in data["seconds"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def world_base_models() -> str:
    """The shipped base models of the worlds: their pretraining settings and affirmative retrieval."""
    paths = sorted(WORLD_MODELS.glob("**/*pretrain_result.json"))
    lines = [
        "| pretrain result | scenes (train/val) | steps | batch | web negations | image->text R@1 | text->image R@1 |"
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for path in paths:
        data = json.loads(path.read_text(encoding="utf-8"))
        config = data["config"]
        lines.append(
            f"| `{path.relative_to(REPO)}` | {data['n_train_scenes']}/{data['n_val_scenes']} | "
            f"{config['steps']} | {config['batch_size']} | {config.get('web_negation_share', 0)} | "
            f"{value(data['i2t_R@1'])} | {value(data['t2i_R@1'])} |"
        )
    return "\n".join(lines) + "\n"


def perf_convert() -> str:
    data = json.loads((RESULTS / "perf-convert.json").read_text(encoding="utf-8"))
    lines = [
        "| text tower | per-token hidden | pooled | projected | round trip bit-for-bit |",
        "|---|---|---|---|---|",
    ]
    for name, f in data["sizes"].items():
        exact = "yes" if f["round_trip_exact"] else "no"
        lines.append(f"| {name} | {f['hidden']:.2e} | {f['pooled']:.2e} | {f['projected']:.2e} | {exact} |")
    return "\n".join(lines) + f"\n\nMax abs difference, random weights; printed by `{data['command']}`.\n"


def perf_stream() -> str:
    """Streamed training input at NegBench scale: memory and start-up against the record count, the goals' ratios."""
    data = json.loads((RESULTS / "perf-stream.json").read_text(encoding="utf-8"))
    lines = ["| records | peak RSS (main + one worker) | time to first step | steps/s |", "|---|---|---|---|"]
    for run in data["streamed"]:
        lines.append(
            f"| {run['records']:,} | {run['peak_rss_mb']:.0f} MB | {run['time_to_first_step_s']:.1f} s | "
            f"{run['steps_per_s']:.2f} |"
        )
    goals, tok, ext, machine = data["goals"], data["tokenizer"], data["extrapolation"], data["machine"]
    lines += [
        "",
        "| goal | measured | target |",
        "|---|---|---|",
        f"| peak RSS, 1M / 20k records | {goals['rss_ratio']:.2f}x | <= {goals['rss_goal']}x |",
        f"| time to first step, 1M / 20k records | {goals['time_to_first_step_ratio']:.2f}x | <= {goals['time_goal']}x |",
        f"| steps/s, streamed / in memory at {data['compare']['records']:,} records | "
        f"{goals['steps_per_s_ratio']:.3f}x | >= {goals['steps_goal']}x |",
        f"| tokenizer texts/s, fast (Rust BPE) / open_clip | {tok['speed_up']:.1f}x "
        f"({tok['fast_texts_per_s']:,} vs {tok['python_open_clip_texts_per_s']:,}) | same ids |",
        "",
        f"Extrapolated to {ext['records']:,} records and {ext['processes']} processes: streamed "
        f"{ext['streamed_rss_node_gb']:.1f} GB per node (RSS does not grow with the records), first step after "
        f"{ext['streamed_time_to_first_step_s']:.0f} s plus a one-time row count of ~{ext['streamed_first_sight_count_s']:.0f} s "
        f"(cached per file version); in memory {ext['in_memory_rss_node_gb']:.0f} GB per node and "
        f"~{ext['in_memory_time_to_first_step_s'] / 3600:.1f} h to the first step. Machine: {machine['cores']} cores "
        f"{machine['cpu']}, 1-minute load {machine['load_avg_1m']} (shared), torch {machine['torch']}, "
        f"{machine['threads']} thread; "
        f"commit {data['commit'][:10]}; printed by `python {data['command']}`.",
    ]
    return "\n".join(lines) + "\n"


# ---- CLI reference -----------------------------------------------------------------------------------------------


def click_help(command, name: str, parent=None) -> list[tuple[str, str]]:
    """``(full name, --help text)`` of ``command`` and, recursively, of every subcommand, in name order."""
    import click

    context = click.Context(command, info_name=name, parent=parent, terminal_width=HELP_WIDTH)
    context.max_content_width = HELP_WIDTH
    out = [(context.command_path, command.get_help(context))]
    if isinstance(command, click.Group):
        for sub in sorted(command.list_commands(context)):
            out += click_help(command.get_command(context, sub), sub, context)
    return out


def trainer_help(parser=None) -> str:
    from trainers.config import build_parser

    parser = build_parser() if parser is None else parser
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=HELP_WIDTH)  # not the terminal's
    return parser.format_help()


def cli_reference(cli=None, parser=None) -> str:
    """Every ``negclip`` command (built-in and plugin-registered) and the trainer, from their real ``--help``."""
    if cli is None:
        from negation_plugins.cli import cli
    lines = []
    for path, text in click_help(cli, "negclip"):
        lines += [f"## `{path}`", "", "```text", text.rstrip(), "```", ""]
    lines += ["## `python -m trainers.finetune`", "", "```text", trainer_help(parser).rstrip(), "```", ""]
    return "\n".join(lines)


BLOCKS: dict[str, Callable[[], str]] = {
    "headline": headline,
    "results": results_tables,
    "demo": demo_table,
    "world-base-models": world_base_models,
    "perf-convert": perf_convert,
    "perf-stream": perf_stream,
    "cli": cli_reference,
}


# ---- pages -------------------------------------------------------------------------------------------------------


def pages() -> list[Path]:
    return sorted({path for pattern in PAGES for path in REPO.glob(pattern)})


def render(text: str, made: dict[str, str]) -> str:
    """``text`` with each generated block's body replaced by what its function makes (made once per run)."""

    def body(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise SystemExit(f"error: unknown generated block {name!r}; blocks: {', '.join(BLOCKS)}")
        if name not in made:
            made[name] = BLOCKS[name]()
        return match.group(1) + made[name].rstrip("\n") + "\n" + match.group(4)

    return BLOCK.sub(body, text)


def stale_pages(made: dict[str, str] | None = None) -> list[Path]:
    """Pages whose generated blocks differ from what the generator makes now."""
    made = {} if made is None else made
    return [page for page in pages() if render(page.read_text(encoding="utf-8"), made) != page.read_text("utf-8")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is stale")
    args = parser.parse_args(argv)
    os.environ.setdefault("NEGATION_PLUGINS", "")  # installed third-party plugins stay out of the reference
    made: dict[str, str] = {}
    stale = stale_pages(made)
    if args.check:
        for page in stale:
            print(f"{page.relative_to(REPO)}: stale; run python tools/gen_docs.py", file=sys.stderr)
        return 1 if stale else 0
    for page in stale:
        page.write_text(render(page.read_text(encoding="utf-8"), made), encoding="utf-8")
        print(f"wrote {page.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
