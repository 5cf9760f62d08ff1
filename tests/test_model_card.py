"""Model cards parse back with huggingface_hub and carry the before/after results."""

import pytest
import yaml
from huggingface_hub import ModelCard

from negation_plugins.model_card import (
    flatten_results,
    update_model_index,
    write_model_card,
)

# the shape of run_mcq's and coco-retrieval's results: headline figures, per-phrasing detail, counts
BEFORE = {
    "mcq": {
        "accuracy": 0.25,
        "affirmation": 1.0,
        "negation": 0.0,
        "hybrid": 0.125,
        "n_items": 40,
        "by_phrasing_split": {"held-out": {"accuracy": 0.2, "negation": 0.0}},
    },
    "coco-retrieval": {"i2t_R@1": 0.9, "t2i_R@1": 0.8, "i2t_R@5": 1.0},
}
AFTER = {
    "mcq": {
        "accuracy": 0.75,
        "affirmation": 1.0,
        "negation": 0.5,
        "hybrid": 0.625,
        "n_items": 40,
        "by_phrasing_split": {"held-out": {"accuracy": 0.7, "negation": 0.45}},
    },
    "coco-retrieval": {"i2t_R@1": 0.88, "t2i_R@1": 0.79, "i2t_R@5": 1.0},
}
HEADLINE_AFTER = {
    ("mcq", "accuracy"): 0.75,
    ("mcq", "affirmation"): 1.0,
    ("mcq", "negation"): 0.5,
    ("mcq", "hybrid"): 0.625,
    ("coco-retrieval", "i2t_R@1"): 0.88,
    ("coco-retrieval", "t2i_R@1"): 0.79,
}


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
    # the model-index: headline metrics only (no per-phrasing detail, no R@5, no counts), each under its task
    assert metrics(card) == HEADLINE_AFTER
    tasks = {(r.dataset_name, r.metric_type): (r.task_type, r.metric_name) for r in card.data.eval_results}
    assert tasks[("mcq", "negation")] == ("multiple-choice", "MCQ negation accuracy")
    assert tasks[("coco-retrieval", "i2t_R@1")] == ("image-text-retrieval", "image->text R@1")
    # the table: every figure
    assert "| mcq | by_phrasing_split.held-out.negation | 0.0000 | 0.4500 | +0.4500 |" in card.text
    assert "| coco-retrieval | i2t_R@5 | 1.0000 | 1.0000 | +0.0000 |" in card.text
    assert "| mcq | accuracy | 0.2500 | 0.7500 | +0.5000 |" in card.text
    assert "n_items" not in card.text  # a count is not a metric
    assert "**objectives**: omni, clip:0.5" in card.text and "**tuning**: lora" in card.text
    assert "**lr**: 1e-05" in card.text
    assert not list(path.parent.glob(".README.md.*"))  # no temp file left behind
    front = yaml.safe_load(path.read_text().split("---\n")[1])
    assert {r["task"]["type"] for r in front["model-index"][0]["results"]} == {
        "multiple-choice",
        "image-text-retrieval",
    }
    assert front["pipeline_tag"] == "zero-shot-image-classification"


def test_local_base_model_stays_out_of_metadata(tmp_path):
    path = write_model_card(tmp_path, base_model=f"local-dir:{tmp_path}", model_name="m")
    card = ModelCard.load(path)
    assert card.data.base_model is None
    assert card.data.eval_results is None
    assert f"**base model**: local-dir:{tmp_path}" in card.text
    assert "_No evaluation results yet._" in card.text


def test_update_model_index_merges_and_redraws(tmp_path):
    path = write_model_card(tmp_path, base_model="org/base", results_before=BEFORE, results_after=AFTER)
    update_model_index(path, {"mcq": {"accuracy": 0.8}, "retrieval--coco": {"i2t_R@1": 0.9, "i2t_R@10": 1.0}})
    card = ModelCard.load(path)
    found = metrics(card)
    assert found[("mcq", "accuracy")] == 0.8
    assert found[("mcq", "negation")] == 0.5  # kept
    assert found[("retrieval--coco", "i2t_R@1")] == 0.9  # added; "--" survives the HTML comment
    assert len(card.data.eval_results) == len(HEADLINE_AFTER) + 1  # R@10 only in the table
    assert "| mcq | accuracy | 0.2500 | 0.8000 | +0.5500 |" in card.text
    assert "| retrieval--coco | i2t_R@1 |  | 0.9000 |  |" in card.text
    assert "| retrieval--coco | i2t_R@10 |  | 1.0000 |  |" in card.text
    assert card.text.count("negation-plugins results start") == 1

    update_model_index(path, {}, results_before={"retrieval--coco": {"i2t_R@1": 0.85}})
    assert "| retrieval--coco | i2t_R@1 | 0.8500 | 0.9000 | +0.0500 |" in ModelCard.load(path).text


def test_update_replaces_a_card_that_listed_every_metric(tmp_path):
    """A card written before the model-index held headline metrics only loses its per-phrasing entries."""
    from huggingface_hub import EvalResult

    path = write_model_card(tmp_path, base_model="org/base", results_after=AFTER)
    card = ModelCard.load(path)
    detail = EvalResult(
        task_type="zero-shot-image-classification",
        dataset_type="mcq",
        dataset_name="mcq",
        metric_type="by_phrasing_split.held-out.accuracy",
        metric_value=0.7,
    )
    card.data.eval_results = [*card.data.eval_results, detail]
    card.save(path)
    update_model_index(path, {"mcq": {"accuracy": 0.8}})
    assert metrics(ModelCard.load(path)) == {**HEADLINE_AFTER, ("mcq", "accuracy"): 0.8}


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


def test_other_benchmarks_give_their_accuracy_only(tmp_path):
    results = {
        "valse-existence": {"accuracy": 0.6, "n_items": 4, "by_kind": {"a": 0.5}},
        "negation-probe": {"cosine": {"mean": 0.9}},
    }
    card = ModelCard.load(write_model_card(tmp_path, base_model=None, results_after=results))
    assert metrics(card) == {("valse-existence", "accuracy"): 0.6}
    assert "| negation-probe | cosine.mean |  | 0.9000 |  |" in card.text
