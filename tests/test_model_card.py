"""Model cards parse back with huggingface_hub and carry the before/after results."""

import pytest
import yaml
from huggingface_hub import ModelCard

from negation_plugins.model_card import (
    flatten_results,
    update_model_index,
    write_model_card,
)

BEFORE = {"mcq": {"accuracy": 0.25, "per_type": {"negation": 0.0, "hybrid": 0.125}, "n": 40}}
AFTER = {"mcq": {"accuracy": 0.75, "per_type": {"negation": 0.5, "hybrid": 0.625}, "n": 40}}


def metrics(card):
    return {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}


def test_card_parses_back_with_metadata_and_table(tmp_path):
    path = write_model_card(
        tmp_path / "run",
        base_model="hf-hub:org/tiny-clip",
        results_before=BEFORE,
        results_after=AFTER,
        objectives=["omni", "clip:0.5"],
        tuning="lora",
        tags=["world"],
        training={"lr": 1e-5, "steps": 300},
    )
    assert path == tmp_path / "run" / "README.md"
    card = ModelCard.load(path)
    assert card.data.library_name == "open_clip"
    assert card.data.base_model == "org/tiny-clip"
    assert card.data.license == "mit"
    assert {"clip", "negation", "world"} <= set(card.data.tags)
    assert card.data.model_name == "run"
    assert metrics(card) == {
        ("mcq", "accuracy"): 0.75,
        ("mcq", "per_type.negation"): 0.5,
        ("mcq", "per_type.hybrid"): 0.625,
    }  # the count "n" is not a metric
    assert "| mcq | per_type.negation | 0.0000 | 0.5000 | +0.5000 |" in card.text
    assert "| mcq | accuracy | 0.2500 | 0.7500 | +0.5000 |" in card.text
    assert "**objectives**: omni, clip:0.5" in card.text and "**tuning**: lora" in card.text
    assert "**lr**: 1e-05" in card.text
    assert not list(path.parent.glob(".README.md.*"))  # no temp file left behind
    front = yaml.safe_load(path.read_text().split("---\n")[1])
    assert front["model-index"][0]["results"][0]["task"]["type"] == "zero-shot-image-classification"


def test_local_base_model_stays_out_of_metadata(tmp_path):
    path = write_model_card(tmp_path, base_model=f"local-dir:{tmp_path}", model_name="m")
    card = ModelCard.load(path)
    assert card.data.base_model is None
    assert card.data.eval_results is None
    assert f"**base model**: local-dir:{tmp_path}" in card.text
    assert "_No evaluation results yet._" in card.text


def test_update_model_index_merges_and_redraws(tmp_path):
    path = write_model_card(tmp_path, base_model="org/base", results_before=BEFORE, results_after=AFTER)
    update_model_index(path, {"mcq": {"accuracy": 0.8}, "retrieval--coco": {"recall@1": 0.9}})
    card = ModelCard.load(path)
    found = metrics(card)
    assert found[("mcq", "accuracy")] == 0.8
    assert found[("mcq", "per_type.negation")] == 0.5  # kept
    assert found[("retrieval--coco", "recall@1")] == 0.9  # added; "--" survives the HTML comment
    assert len(card.data.eval_results) == 4
    assert "| mcq | accuracy | 0.2500 | 0.8000 | +0.5500 |" in card.text
    assert "| retrieval--coco | recall@1 |  | 0.9000 |  |" in card.text
    assert card.text.count("negation-plugins results start") == 1

    update_model_index(path, {}, results_before={"retrieval--coco": {"recall@1": 0.85}})
    assert "| retrieval--coco | recall@1 | 0.8500 | 0.9000 | +0.0500 |" in ModelCard.load(path).text


def test_update_foreign_card_appends_section_and_keeps_other_results(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(
        "---\nlicense: apache-2.0\nmodel-index:\n- name: other\n  results:\n  - task:\n      type: image-classification\n"
        "    dataset:\n      name: imagenet\n      type: imagenet\n    metrics:\n    - type: top1\n      value: 0.6\n"
        "---\n\n# Someone else's card\n"
    )
    update_model_index(path, {"mcq": {"accuracy": 0.7}})
    card = ModelCard.load(path)
    assert metrics(card) == {("imagenet", "top1"): 0.6, ("mcq", "accuracy"): 0.7}
    assert card.data.license == "apache-2.0"
    assert "# Someone else's card" in card.text and "| mcq | accuracy |  | 0.7000 |  |" in card.text


def test_bad_inputs_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model card"):
        update_model_index(tmp_path / "missing.md", {"mcq": {"accuracy": 0.1}})
    with pytest.raises(TypeError, match="benchmark 'mcq' must be a dict"):
        flatten_results({"mcq": [0.1]})
    assert flatten_results({"accuracy": 0.5, "n": 3}) == {"evaluation": {"accuracy": 0.5}}
