"""End to end on the world fixture: real records from the template negator, a short LoRA fine-tune of the
pretrained world model, and held-out MCQ accuracy on negated questions going up."""

from __future__ import annotations

import pytest

from trainers.config import TrainConfig
from trainers.demo import negation_records
from trainers.finetune import train


@pytest.mark.e2e
def test_short_lora_finetune_raises_negation_mcq_accuracy(world_coco, world_model, tmp_path):
    records = tmp_path / "records.jsonl"
    summary = negation_records(world_coco, records, seed=0, progress=False)
    assert summary["absence"] > 0 and summary["presence"] > 0
    config = TrainConfig(model=world_model, train=str(records), images=str(world_coco.images),
                         output=str(tmp_path / "out"), tuning="lora", lr=1e-3, max_steps=80, batch_size=32, eval_every=80,
                         eval_mcq=str(world_coco.mcq_csv), val_fraction=0.1, progress=False, log_with="none",
                         export_transformers=False)
    result = train(config)
    before, after = result["results_before"]["mcq"], result["results_after"]["mcq"]
    negated_before = before["negation"] + before["hybrid"]
    negated_after = after["negation"] + after["hybrid"]
    assert after["hybrid"] > before["hybrid"] + 0.1, (before, after)
    assert negated_after > negated_before + 0.1, (before, after)
    assert after["affirmation"] >= before["affirmation"] - 0.1, (before, after)
