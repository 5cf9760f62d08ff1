"""accelerate for real: two CPU processes (gloo) whose gradients must sync, and a run killed with SIGKILL that
resumes from its last checkpoint with exactly the losses of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from negation_plugins.testing import tiny_model_dir
from tests.test_trainer_support import write_records

ROOT = Path(__file__).resolve().parents[1]
TRAINER = [sys.executable, "-m", "trainers.finetune"]


@pytest.fixture(scope="module")
def setup(world_coco, tmp_path_factory):
    folder = tmp_path_factory.mktemp("accel")
    records = folder / "records.jsonl"
    write_records(world_coco, records, limit=300)
    return {"spec": tiny_model_dir(folder / "model"), "records": records, "images": world_coco.images}


def trainer_args(setup, out, *extra):
    return [
        "--model",
        setup["spec"],
        "--train",
        str(setup["records"]),
        "--images",
        str(setup["images"]),
        "--output",
        str(out),
        "--batch-size",
        "8",
        "--val-fraction",
        "0",
        "--no-progress",
        "--log-with",
        "none",
        "--no-export-transformers",
        "--tuning",
        "full",
        "--lr",
        "0.01",
        "--objective",
        "omni",
        *extra,
    ]


def environment():
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_to_end(command: list[str]) -> None:
    """Run ``command`` (the trainer, alone or under ``accelerate launch``) to its end; a failure shows its stderr."""
    done = subprocess.run(
        command, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_two_gloo_processes_train_in_sync(setup, tmp_path):
    out = tmp_path / "ddp"
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "trainers.finetune",
        *trainer_args(setup, out, "--max-steps", "3"),
    ]
    run_to_end(command)
    summary = json.loads((out / "results.json").read_text())
    assert summary["num_processes"] == 2
    fingerprints = summary["rank_weight_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]  # both ranks ran, weights identical
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]


def test_sigkill_then_resume_continues_with_the_uninterrupted_losses(setup, tmp_path):
    steps = "60"
    reference = tmp_path / "reference"
    run_to_end([*TRAINER, *trainer_args(setup, reference, "--max-steps", steps)])
    expected = {r["step"]: r["loss"] for r in metrics(reference)}

    out = tmp_path / "killed"
    args = trainer_args(setup, out, "--max-steps", steps, "--save-every", "4")
    process = subprocess.Popen(
        [*TRAINER, *args],
        cwd=ROOT,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 200
    while len(metrics(out)) < 10 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = len(metrics(out))
    assert process.returncode == -signal.SIGKILL and 10 <= killed_at < int(steps)
    checkpoints = sorted((out / "checkpoints").glob("step-*"))
    assert checkpoints, "no checkpoint was written before the kill"

    run_to_end([*TRAINER, *args, "--resume"])
    got = metrics(out)
    assert [r["step"] for r in got] == list(range(1, int(steps) + 1))
    resumed_from = int(checkpoints[-1].name.split("-")[1])
    assert resumed_from < killed_at + 1
    for record in got:
        assert record["loss"] == expected[record["step"]], record["step"]
