"""The batch/objective contract from outside the library: an objective plugin that needs a batch key no built-in
makes trains through the real trainer, declared in this one file; and the one on-the-fly negation path: with two
processes the negations of training and validation are the same whether the image features come from the store
(made in the DataLoader) or from the vision tower in the training thread.

Run as a script (``accelerate launch tests/test_trainer_contract.py ARGS``), this file registers its plugin and runs
the trainer with ARGS: how the two-process test gets its objective into each process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from negation_plugins.hookspecs import hookimpl
from negation_plugins.losses import TEXT, BatchKey, Objective, clip_symmetric
from negation_plugins.losses.tng import TNGObjective, negate_on_the_fly

ROOT = Path(__file__).resolve().parents[1]
LOG_ENV = "TEST_NEGATION_LOG"  # folder where each process logs the negations it made


def object_prompts(draw) -> list[str]:
    """'a photo of a {object}' for the first object each example's records name present."""
    return [f"a photo of a {e.present_objects[0]}" for e in draw.examples]


OBJECT_PROMPT = BatchKey(
    "object_prompt",
    TEXT,
    object_prompts,
    "a prompt naming one present object",
    usable=lambda e: bool(e.present_objects),
)


class ObjectPromptObjective(Objective):
    """CLIP InfoNCE between images and prompts naming an object they show: a key no built-in objective makes."""

    name = "object-prompt"
    description = "test plugin: images vs 'a photo of a {present object}'"
    requires = ("image", "object_prompt", "logit_scale")
    batch_keys = (OBJECT_PROMPT,)

    def loss(self, batch):
        assert batch["object_prompt"].shape == batch["image"].shape  # (N, D), one prompt per image
        return clip_symmetric(batch["image"], batch["object_prompt"], batch["logit_scale"])


def logged_hybrid(draw) -> list[str]:
    """TNG's hybrid negations of the draw, logged with the draw's seed and captions by the process that made them."""
    texts = negate_on_the_fly(draw)["hybrid"]
    folder = Path(os.environ[LOG_ENV])
    with open(folder / f"rank-{os.environ.get('RANK', '0')}.jsonl", "a") as log:
        log.write(
            json.dumps({"seed": draw.seed, "captions": [e.caption for e in draw.examples], "texts": texts}) + "\n"
        )
    return texts


class LoggedTNGObjective(TNGObjective):
    """TNG reading its hybrid negations through a key that logs them."""

    name = "tng-logged"
    requires = ("image", "logged_hybrid", "full", "caption", "logit_scale")
    batch_keys = (
        BatchKey("logged_hybrid", TEXT, logged_hybrid, "TNG's hybrid, logged", after_images=True),
        *TNGObjective.batch_keys,
    )

    def loss(self, batch):
        return super().loss({**batch, "hybrid": batch["logged_hybrid"]})


class Plugin:
    @hookimpl
    def register_objectives(self, register):
        register(ObjectPromptObjective)
        register(LoggedTNGObjective)


def test_an_objective_plugin_with_its_own_batch_key_trains_through_the_trainer(tmp_path, world_coco, register_plugin):
    from negation_plugins.testing import tiny_model_dir
    from tests.test_trainer_support import write_records
    from trainers.config import parse_config
    from trainers.finetune import train

    register_plugin(Plugin(), "test-contract")
    records = tmp_path / "records.jsonl"
    write_records(world_coco, records, limit=80)
    summary = train(parse_config([
        "--model", tiny_model_dir(tmp_path / "model"), "--train", str(records), "--images", str(world_coco.images),
        "--output", str(tmp_path / "out"), "--batch-size", "8", "--max-steps", "3", "--eval-every", "3",
        "--objective", "object-prompt", "--objective", "clip:0.5", "--tuning", "full", "--lr", "0.01",
        "--no-progress", "--log-with", "none", "--no-export-transformers",
    ]))  # fmt: skip
    steps = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3] and all(s["loss/object-prompt"] > 0 for s in steps)
    assert summary["results_after"]["validation"]["loss"] > 0
    assert summary["dropped_examples"] > 0  # captions whose records name no present object cannot make the key


def launch_logged(world_coco, model: str, out: Path, *extra) -> dict[str, list]:
    """Two gloo processes training tng-logged on the fly; the negations each process logged."""
    from tests.test_trainer_accelerate import environment, free_port

    log = out.with_name(out.name + "-log")
    log.mkdir()
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), __file__,
        "--model", model, "--train", str(world_coco.captions), "--instances", str(world_coco.instances),
        "--images", str(world_coco.images), "--negation", "on-the-fly", "--objective", "tng-logged",
        "--output", str(out), "--batch-size", "4", "--max-steps", "3", "--eval-every", "3", "--val-fraction", "0.3",
        "--val-max-batches", "2", "--feature-store", str(out.parent / "store"), "--dataloader-num-workers", "0",
        "--no-progress", "--log-with", "none", "--no-export-transformers", *extra,
    ]  # fmt: skip
    env = {**environment(), LOG_ENV: str(log)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return {p.name: [json.loads(line) for line in p.read_text().splitlines()] for p in sorted(log.iterdir())}


def test_two_processes_negate_the_same_with_and_without_the_feature_store(tmp_path, world_coco):
    from negation_plugins.testing import tiny_model_dir

    model = tiny_model_dir(tmp_path / "model")
    stored = launch_logged(world_coco, model, tmp_path / "stored")
    live = launch_logged(world_coco, model, tmp_path / "live", "--no-cache-image-features")
    assert sorted(stored) == ["rank-0.jsonl", "rank-1.jsonl"]
    assert stored == live
    validation_seeds = {rank: {e["seed"] for e in log if e["seed"] >= 10_000 * 1_000_003} for rank, log in live.items()}
    assert validation_seeds["rank-0.jsonl"] and validation_seeds["rank-0.jsonl"].isdisjoint(
        validation_seeds["rank-1.jsonl"]
    )


if __name__ == "__main__":
    from negation_plugins.plugins import pm
    from trainers.finetune import main

    pm.register(Plugin(), name="test-contract")
    sys.exit(main(sys.argv[1:]))
