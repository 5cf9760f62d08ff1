"""Experiments as data: the row files, and perf/compare_training.py run end to end on a short setting."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from trainers.config import build_config

REPO = Path(__file__).resolve().parents[1]


def load_runner():
    spec = importlib.util.spec_from_file_location("compare_training", REPO / "perf" / "compare_training.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


runner = load_runner()


def test_every_committed_row_builds_a_trainer_config():
    rows = runner.read_rows()
    assert len(rows) >= 40
    assert len({row.name.partition("-")[0] for row in rows}) == len(rows), "two rows share a number"
    for row in rows:
        assert row.description and row.question, row.name
        build_config(row.recipe, **row.settings)  # an unknown or misspelt setting raises


def test_rows_are_chosen_by_file_name_number_or_name(tmp_path):
    rows = runner.read_rows()
    by_name = {row.name: row for row in rows}
    chosen = runner.select_rows(rows, "38,breadth-lora,36-breadth")
    assert [row.name for row in chosen] == ["38-breadth-5-epochs", "37-breadth-lora", "36-breadth"]
    assert runner.select_rows(rows, "all") == rows
    assert by_name["38-breadth-5-epochs"].answers_to("038")
    with pytest.raises(SystemExit, match="--rows 'nope': no such row"):
        runner.select_rows(rows, "nope")
    (tmp_path / "01-x.toml").write_text('description = "x"\nquestion = "x?"\nlearning_rate = 1\n')
    with pytest.raises(SystemExit, match=r"01-x.toml: unknown keys \['learning_rate'\]"):
        runner.read_rows(tmp_path)


@pytest.mark.e2e
def test_runner_writes_one_result_per_row_and_world_and_merges_seeds(tmp_path):
    results = tmp_path / "results"
    common = ["--rows", "38", "--steps", "2", "--workdir", str(tmp_path / "work"), "--results-dir", str(results)]
    assert runner.main([*common, "--seeds", "0", "--machine-note", "test"]) == 0
    assert runner.main([*common, "--seeds", "1", "--correction", "span-subtraction"]) == 0
    (path,) = results.iterdir()
    assert path.name == "38-breadth-5-epochs--shapes--steps2.json"
    result = json.loads(path.read_text())
    assert result["world"] == "shapes" and result["seeds"] == [0, 1]
    assert result["settings"]["steps"] == 2 and result["settings"]["trainer"]["max_steps"] == 2
    assert "output" not in result["settings"]["trainer"]  # no machine paths in the settings
    first, second = result["runs"]
    assert first["machine"]["note"] == "test" and first["threads"] == 1 and "--seeds 0" in first["command"]
    assert set(first["figures"]) == set(runner.FIGURES) and first["figures"]["held_out_mcq"] is not None
    assert set(second["corrected"]) == {"span-subtraction"} and first["corrected"] == {}
    base = result["base_model"]["figures"]
    assert base["i2t_r1_vs_base"] == 1.0
    for name in runner.FIGURES:
        values = [first["figures"][name], second["figures"][name]]
        assert result["summary"][name]["mean"] == pytest.approx(sum(values) / 2, abs=1e-4)
        assert result["summary"][name]["min"] == min(values)
    assert first["figures"]["i2t_r1_vs_base"] == pytest.approx(first["figures"]["i2t_r1"] / base["i2t_r1"], abs=1e-3)
