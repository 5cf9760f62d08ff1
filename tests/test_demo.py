"""`negclip demo` end to end on a small world: every artifact lands in one folder and is usable."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from negation_plugins.cli import cli


@pytest.mark.e2e
def test_demo_writes_results_plot_card_and_a_loadable_model(tmp_path, monkeypatch):
    monkeypatch.setenv("NEGATION_PLUGINS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        cli,
        [
            "demo",
            "--output",
            str(out),
            "--images",
            "240",
            "--pretrain-steps",
            "40",
            "--max-steps",
            "12",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "negation" in result.output and "affirmative R@1 retained" in result.output

    results = json.loads((out / "results.json").read_text())
    for side in ("before", "after"):
        mcq = results[side]["mcq"]
        assert mcq["n_items"] > 0 and all(0 <= mcq[t] <= 1 for t in ("affirmation", "negation", "hybrid"))
        assert 0 <= results[side]["retrieval"]["i2t_R@1"] <= 1
    # one retrieval figure: pretraining's and the demo's evaluation of the base model are the same number
    assert results["base_model"]["i2t_R@1"] == results["before"]["retrieval"]["i2t_R@1"]
    assert results["base_model"]["t2i_R@1"] == results["before"]["retrieval"]["t2i_R@1"]
    assert results["training"]["steps"] == 12
    # seen and held-out negation phrasings are scored apart; a non-default world is pretrained, not shipped
    assert set(results["after"]["mcq"]["by_phrasing_split"]) == {"train", "held-out"}
    assert results["base_model"]["shipped"] is False and "held-out phrasings" in result.output
    assert results["data"]["absence"] > 0 and results["data"]["presence"] > 0
    with Image.open(out / "before_after.png") as plot:
        assert plot.size[0] > 300
    card = (out / "README.md").read_text()
    assert card.startswith("---") and "negation" in card and "## Results" in card

    from negation_plugins import load_clip

    tuned = load_clip(f"local-dir:{out / 'model'}")
    assert tuned.encode_text(["a star but no circle"]).shape[0] == 1
    # full tuning: the text encoder in diffusers' layout, ready for a pipeline's text_encoder
    assert (out / "model" / "text_encoder" / "config.json").is_file()
    assert results["settings"]["finetune"]["tuning"] == "full"
