"""Preemption and full disks: SIGTERM at a random step of a two-process gloo run (started as a scheduler starts its
tasks, one process per rank) saves one checkpoint, exits with the requeue code, and --resume latest continues with
the losses of an uninterrupted run; a checkpoint save that hits a file-size limit (RLIMIT_FSIZE set in the child,
what a full disk does to a write) ends in one line naming the checkpoint, keeps the earlier one, and a rerun
resumes from it."""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import time

import pytest

from negation_plugins.testing import tiny_model_dir
from tests.test_trainer_accelerate import ROOT, TRAINER, environment, free_port, metrics, trainer_args
from tests.test_trainer_support import write_records
from trainers.config import REQUEUE_EXIT_CODE, STATE_FILE

STEPS = 24


@pytest.fixture(scope="module")
def setup(world_coco, tmp_path_factory):
    folder = tmp_path_factory.mktemp("preemption")
    write_records(world_coco, folder / "records.jsonl", limit=300)
    return {"spec": tiny_model_dir(folder / "model"), "records": folder / "records.jsonl", "images": world_coco.images}


def start_ranks(setup, out, *extra, limit_bytes: int | None = None, processes: int = 2) -> list[subprocess.Popen]:
    """One trainer process per rank with torch.distributed's environment (what srun or a Kubernetes job gives
    each task); ``limit_bytes`` caps the size of any file they write."""
    args = [*TRAINER, *trainer_args(setup, out, "--max-steps", str(STEPS), "--log-every", "1", *extra)]
    port = str(free_port())

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    ranks = []
    for rank in range(processes):
        env = dict(environment(), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(processes))
        env.update(LOCAL_WORLD_SIZE=str(processes), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        ranks.append(
            subprocess.Popen(
                args,
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=cap if limit_bytes else None,
            )
        )
    return ranks


def finish(ranks: list[subprocess.Popen]) -> list[tuple[int, str]]:
    return [(process.wait(timeout=240), process.stderr.read()) for process in ranks]


def test_sigterm_at_a_random_step_saves_exits_for_requeue_and_resumes_exactly(setup, tmp_path):
    reference = tmp_path / "reference"
    assert [code for code, _ in finish(start_ranks(setup, reference))] == [0, 0]
    expected = {r["step"]: r["loss"] for r in metrics(reference)}
    assert len(expected) == STEPS

    out = tmp_path / "preempted"
    ranks = start_ranks(setup, out, "--checkpointing-steps", "1000")  # no periodic checkpoint: the signal's only
    at_step = random.Random(os.getpid()).randint(2, STEPS - 6)
    deadline = time.time() + 200
    while len(metrics(out)) < at_step and time.time() < deadline and ranks[0].poll() is None:
        time.sleep(0.01)
    ranks[1].send_signal(signal.SIGTERM)  # one rank is told; both must stop after the same step
    time.sleep(0.05)
    ranks[1].send_signal(signal.SIGTERM)  # a second signal while saving changes nothing
    results = finish(ranks)
    assert [code for code, _ in results] == [REQUEUE_EXIT_CODE] * 2, results[0][1][-2000:]
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and (checkpoints[0] / STATE_FILE).is_file(), checkpoints  # complete, no temp left
    stopped = int(checkpoints[0].name.split("-")[1])
    assert at_step <= stopped < STEPS and len(metrics(out)) == stopped
    assert "resume with --resume latest" in results[0][1]

    assert [code for code, _ in finish(start_ranks(setup, out, "--resume", "latest"))] == [0, 0]
    got = metrics(out)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert {r["step"]: r["loss"] for r in got} == expected


def test_a_full_disk_during_a_checkpoint_keeps_the_earlier_one_and_a_rerun_resumes(setup, tmp_path):
    out = tmp_path / "full"
    first = start_ranks(setup, out, "--checkpointing-steps", "1000", processes=1)
    while len(metrics(out)) < 4 and first[0].poll() is None:
        time.sleep(0.01)
    first[0].send_signal(signal.SIGTERM)
    assert finish(first)[0][0] == REQUEUE_EXIT_CODE
    (earlier,) = (out / "checkpoints").iterdir()
    files_before = {p.name: p.stat().st_size for p in earlier.iterdir()}

    # resumed with a 64 KiB file-size limit: the next checkpoint (every 2 steps) cannot be written
    resumed = start_ranks(
        setup, out, "--resume", "latest", "--checkpointing-steps", "2", limit_bytes=64 * 1024, processes=1
    )
    code, stderr = finish(resumed)[0]
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, stderr[-2000:]
    assert "file size limit exceeded while writing" in lines[0] and str(out / "checkpoints" / "step-") in lines[0], (
        lines[0]
    )
    assert "Traceback" not in stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [earlier.name]  # no temp folder left
    assert {p.name: p.stat().st_size for p in earlier.iterdir()} == files_before

    assert finish(start_ranks(setup, out, "--resume", "latest", processes=1))[0][0] == 0
    assert [r["step"] for r in metrics(out)] == list(range(1, STEPS + 1))  # exactness: the SIGTERM test above
