"""The docs: generated pages match what tools/gen_docs.py makes of the committed JSON and the real --help, the site
builds with ``mkdocs build --strict``, and every code block in README.md and docs/ either runs here or says why not."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

REPO = Path(__file__).resolve().parents[1]


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "tools" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = load_generator()


def test_generated_pages_are_current():
    stale = [str(page.relative_to(REPO)) for page in gen.stale_pages()]
    assert not stale, f"{stale} differ from what the generator makes: run python tools/gen_docs.py and commit"


def test_a_changed_result_makes_the_results_pages_stale(tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(gen.RESULTS, results)
    path = next(p for p in sorted(results.glob("*.json")) if "schema" in json.loads(p.read_text()))
    data = json.loads(path.read_text())
    data["summary"]["negation"]["mean"] += 0.1  # as if a hand had edited the page's figure, not the run
    path.write_text(json.dumps(data))
    monkeypatch.setattr(gen, "RESULTS", results)
    stale = {page.relative_to(REPO).as_posix() for page in gen.stale_pages()}
    assert {"README.md", "docs/results.md"} <= stale


def test_every_generated_block_is_known_and_the_headline_table_is_short():
    for page in gen.pages():
        for match in gen.BLOCK.finditer(page.read_text()):
            assert match["name"] in gen.BLOCKS, (page, match["name"])
    readme = (REPO / "README.md").read_text()
    table = gen.BLOCK.search(readme)
    assert table["name"] == "headline"
    body_rows = [line for line in table["body"].splitlines() if line.startswith("| ") and "---" not in line]
    assert 1 <= len(body_rows) - 1 <= 6  # header excluded


def walk(command, name, parent=None):
    """(context, command) for ``command`` and every subcommand."""
    context = click.Context(command, info_name=name, parent=parent)
    yield context, command
    if isinstance(command, click.Group):
        for sub in command.list_commands(context):
            yield from walk(command.get_command(context, sub), sub, context)


def test_cli_reference_has_every_command_and_flag():
    from negation_plugins.cli import cli
    from trainers.config import build_parser

    page = (REPO / "docs" / "cli.md").read_text()
    for context, command in walk(cli, "negclip"):
        assert f"## `{context.command_path}`" in page
        for param in command.params:
            for flag in (*param.opts, *param.secondary_opts):
                if flag.startswith("-"):
                    assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", page), (context.command_path, flag)
    for action in build_parser()._actions:
        for flag in action.option_strings:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", page), ("trainers.finetune", flag)


@pytest.fixture
def fresh_reference(tmp_path, monkeypatch):
    """A checkout whose docs/cli.md is what the generator makes now, so a check on it fails only for the change a
    test makes (the committed page is checked by test_generated_pages_are_current)."""
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "cli.md"
    page.write_text("# CLI reference\n\n<!-- generated:cli -->\n<!-- /generated:cli -->\n")
    monkeypatch.setattr(gen, "REPO", tmp_path)
    page.write_text(gen.render(page.read_text(), {}))
    assert gen.stale_pages() == []
    return page


def test_cli_check_fails_when_a_negclip_flag_is_added_without_regenerating(fresh_reference, monkeypatch):
    from negation_plugins.cli import cli

    world = cli.get_command(click.Context(cli), "world")
    make = world.get_command(click.Context(world), "make")
    flag = click.Option(["--brand-new-flag"], help="added without regenerating the reference")
    monkeypatch.setattr(make, "params", [*make.params, flag])
    assert "--brand-new-flag" in gen.cli_reference()
    assert gen.stale_pages() == [fresh_reference]
    assert gen.main(["--check"]) == 1


def test_cli_check_fails_when_a_trainer_flag_is_added_without_regenerating(fresh_reference, monkeypatch):
    import trainers.config

    original = trainers.config.build_parser

    def with_new_flag():
        parser = original()
        parser.add_argument("--brand-new-trainer-flag", help="added without regenerating the reference")
        return parser

    monkeypatch.setattr(trainers.config, "build_parser", with_new_flag)
    assert gen.stale_pages() == [fresh_reference]


def test_readme_is_a_front_page():
    readme = (REPO / "README.md").read_text()
    lines = readme.splitlines()
    assert len(lines) <= 220
    install = next(i for i, line in enumerate(lines) if line.startswith("## Install"))
    stable_diffusion = next(i for i, line in enumerate(lines) if "StableDiffusionPipeline.from_pretrained" in line)
    assert stable_diffusion - install < 40, "the SD quick start must be on the first screen after install"
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):
        assert readme.count(marker) == 1


@pytest.mark.parametrize(
    "page", ["README.md", *(p.relative_to(REPO).as_posix() for p in sorted(REPO.glob("docs/*.md")))]
)
def test_user_facing_pages_have_no_row_numbers_or_temporary_paths(page):
    text = (REPO / page).read_text()
    assert not re.search(r"(?<!-)\brows? \d+(?![\w-])", text, re.I), "refer to an experiment by its row file's name"
    assert "/tmp/" not in text


def test_mkdocs_builds_strict(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "cli" / "index.html").is_file()


# ---- code blocks ---------------------------------------------------------------------------------------------------

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
NEEDS = re.compile(r"<!-- needs: [^>]*\S[^>]* -->")
# README blocks .ci/run itself runs (the main job and the test command)
RUN_BY_CI = ("<!-- main-command -->", "<!-- test-command -->")
RUNNABLE = {"bash": "bash", "sh": "bash", "python": "python"}
OUTPUT = {"text"}  # what a command prints: nothing to run


def code_blocks(page: Path) -> list[tuple[str, str, str]]:
    """``(language, code, the text just before the block)`` of each fenced block, generated blocks included."""
    text = page.read_text()
    return [(m[1], m[2], text[max(0, m.start() - 300) : m.start()]) for m in FENCE.finditer(text)]


def marked(before: str) -> bool:
    last = before.rstrip().splitlines()[-1] if before.strip() else ""
    return bool(NEEDS.fullmatch(last.strip())) or last.strip() in RUN_BY_CI


def example_pages():
    return [REPO / "README.md", *sorted(REPO.glob("docs/*.md"))]


def test_every_code_block_runs_here_or_says_why_not():
    """A block that needs real weights, data, a GPU or the network carries ``<!-- needs: why -->`` on the line
    before it; everything else must be a language this suite runs (bash, python) or output (text)."""
    for page in example_pages():
        for language, code, before in code_blocks(page):
            if marked(before):
                continue
            assert language in RUNNABLE or language in OUTPUT, (
                f"{page.name}: a {language or 'plain'} block without <!-- needs: ... -->: {code[:80]!r}"
            )


def runnable_blocks(page: Path) -> list[tuple[str, str]]:
    return [(lang, code) for lang, code, before in code_blocks(page) if lang in RUNNABLE and not marked(before)]


@pytest.mark.e2e
@pytest.mark.parametrize("page", [p.relative_to(REPO).as_posix() for p in example_pages() if runnable_blocks(p)])
def test_examples_run(page, tmp_path):
    """Every unmarked bash/python block of a page, in order, in one folder that looks like a clone's root (the
    package folders linked in), offline, with the shipped world model: a block failing fails the test."""
    blocks = runnable_blocks(REPO / page)
    for name in ("negation_plugins", "trainers", "integrations"):  # what examples read; nothing they could write into
        (tmp_path / name).symlink_to(REPO / name)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "NEGATION_PLUGINS": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(tmp_path),
    }
    for language, code in blocks:
        command = ["bash", "-e", "-o", "pipefail", "-c", code] if RUNNABLE[language] == "bash" else [sys.executable]
        done = subprocess.run(
            command,
            input=code if language == "python" else None,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{page}: block failed:\n{code}\n--- stderr:\n{done.stderr[-3000:]}"
