"""accelerate/diffusers conventions: mixed precision from accelerate, checkpoint rotation, --resume PATH, --push-to-hub
without checkpoints/, --report-to, gradient checkpointing, and --gather-negatives over two gloo processes."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from negation_plugins.testing import tiny_model_dir
from tests.test_trainer_accelerate import ROOT, environment, free_port, metrics, trainer_args
from tests.test_trainer_support import write_records
from trainers.config import ConfigError, parse_config, validate
from trainers.finetune import train


@pytest.fixture(scope="module")
def setup(world_coco, tmp_path_factory):
    folder = tmp_path_factory.mktemp("conventions")
    write_records(world_coco, folder / "records.jsonl", limit=300)
    return {"spec": tiny_model_dir(folder / "model"), "records": folder / "records.jsonl", "images": world_coco.images}


def run(setup, out, *extra):
    return train(parse_config(trainer_args(setup, out, *extra)))


def test_mixed_precision_defaults_to_what_accelerate_launch_says(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    assert run(setup, tmp_path / "a", "--max-steps", "1")["mixed_precision"] == "bf16"
    assert run(setup, tmp_path / "b", "--max-steps", "1", "--mixed-precision", "no")["mixed_precision"] == "no"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    summary = run(setup, tmp_path / "c", "--max-steps", "1")
    assert summary["mixed_precision"] == "no" and summary["config"]["mixed_precision"] is None


def test_rotation_keeps_n_checkpoints_and_resume_from_a_path_continues_exactly(setup, tmp_path):
    reference = tmp_path / "ref"
    run(setup, reference, "--max-steps", "6", "--checkpointing-steps", "1", "--checkpoints-total-limit", "2")
    kept = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert kept == ["step-0000004", "step-0000005"]
    expected = {r["step"]: r["loss"] for r in metrics(reference)}
    # a new run into an earlier run's output would mix its checkpoints with the earlier ones ("latest" = theirs)
    with pytest.raises(ConfigError, match=r"ref: holds checkpoints of an earlier run \(newest step-0000005\)"):
        run(setup, reference, "--max-steps", "6")

    resumed = tmp_path / "resumed"
    run(setup, resumed, "--max-steps", "6", "--resume_from_checkpoint", str(reference / "checkpoints/step-0000004"))
    assert [(r["step"], r["loss"]) for r in metrics(resumed)] == [(5, expected[5]), (6, expected[6])]
    with pytest.raises(ConfigError, match="not a complete checkpoint folder"):
        run(setup, tmp_path / "bad", "--resume", str(tmp_path))


def test_report_to_is_an_alias_of_log_with_and_checked():
    assert parse_config(["--report-to", "wandb"]).log_with == "wandb"
    assert parse_config(["--resume"]).resume == "latest"
    assert parse_config(["--save-every", "7"]).checkpointing_steps == 7
    with pytest.raises(SystemExit):  # a value outside the type's choices: argparse names them
        parse_config(["--report-to", "mlflow"])
    config = replace(parse_config(["--model", "m", "--train", __file__, "--output", "o"]), log_with="mlflow")
    with pytest.raises(ConfigError, match="--report-to/--log-with 'mlflow'"):  # e.g. from a YAML file
        validate(config)


def test_gradient_checkpointing_gives_the_same_losses(setup, tmp_path):
    plain = run(setup, tmp_path / "plain", "--max-steps", "2")
    checkpointed = run(setup, tmp_path / "ckpt", "--max-steps", "2", "--gradient-checkpointing")
    assert [r["loss"] for r in metrics(tmp_path / "plain")] == pytest.approx(
        [r["loss"] for r in metrics(tmp_path / "ckpt")], abs=1e-5
    )
    assert plain["config"]["gradient_checkpointing"] is False and checkpointed["config"]["gradient_checkpointing"]


def test_push_to_hub_leaves_checkpoints_out(setup, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from tests.hub_server import HubServer

    token = "hf_TESTtoken0123456789abcdefPUSH"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_TOKEN", token)
    out = tmp_path / "pushed"
    with HubServer(token) as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        run(setup, out, "--max-steps", "3", "--checkpointing-steps", "1", "--push-to-hub", "tester/negclip")
        uploaded = set(hub.state.repos["tester/negclip"].files)
    assert (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
    assert "open_clip_model.safetensors" in uploaded and "results.json" in uploaded
    assert not [p for p in uploaded if p.startswith("checkpoints/")], uploaded


def launch(setup, out, processes, *extra):
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1"]
    if processes == 1:
        command = [sys.executable]
    else:
        command += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    args = trainer_args(setup, out, *extra)
    args[args.index("omni")] = "clip"  # no random choice in the batch: one process == two processes' rows
    command += ["-m", "trainers.finetune", *args]
    done = subprocess.run(command, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [r["loss"] for r in metrics(out)]


def test_gather_negatives_with_two_processes_gives_the_single_process_loss_on_the_concatenated_batch(setup, tmp_path):
    """Rank r's batch of 4 is examples [4r, 4r+4) of the plan; one process with batch 8 sees the same 8 in the same
    order. The clip objective draws nothing at random, so losses match step for step iff the loss is computed on the
    global batch and the gradients are exactly those of the concatenated batch."""
    common = ("--max-steps", "3", "--lr", "0.003")
    single = launch(setup, tmp_path / "single", 1, "--batch-size", "8", *common)
    local = launch(setup, tmp_path / "local", 2, "--batch-size", "4", *common)
    gathered = launch(setup, tmp_path / "gathered", 2, "--batch-size", "4", "--gather-negatives", *common)
    assert gathered == pytest.approx(single, abs=2e-5)
    assert local[0] != pytest.approx(single[0], abs=1e-3)  # without gathering each rank sees 4 negatives
