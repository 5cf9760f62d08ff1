"""The trainer on every format people hold, streamed and in memory; kill-and-resume on streamed shards."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch
from PIL import Image

from negation_plugins.data.formats import CCNEG_EVAL_SIZE
from negation_plugins.testing import tiny_model_dir
from tests.test_formats import write_ccneg, write_img2dataset_shards, write_negcap, write_negmcq
from tests.test_trainer_accelerate import ROOT, TRAINER, environment, metrics, run_to_end
from trainers.config import parse_config
from trainers.finetune import train

N_IMAGES = 12


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream-train")
    images = folder / "images"
    images.mkdir()
    for i in range(N_IMAGES):
        Image.new("RGB", (16, 16), (i * 20, 255 - i * 20, 90)).save(images / f"{i:03d}.jpg")
    captions = [f"a photo of shape {i} on a table" for i in range(N_IMAGES)]
    negcap = write_negcap(
        folder / "negcap.csv",
        [(f"{i:03d}.jpg", captions[i], [f"{captions[i]}, with no cup", f"no chair near shape {i}"]) for i in range(12)],
    )
    negmcq = write_negmcq(
        folder / "negmcq.csv",
        [
            (f"{i:03d}.jpg", [captions[i], f"shape {i} but no table", f"no shape {i}", f"a dog {i}"], 0, "positive")
            for i in range(12)
        ],  # fmt: skip
    )
    ccneg = write_ccneg(folder / "ccneg.pt", CCNEG_EVAL_SIZE + N_IMAGES)
    (folder / "images" / "images").mkdir()
    for i in range(N_IMAGES):  # CC-Neg's paths are images/NNNNNN.jpg
        (folder / "images" / "images" / f"{i:06d}.jpg").write_bytes((images / f"{i:03d}.jpg").read_bytes())
    shards = write_img2dataset_shards(
        folder / "shards", n_shards=4, per_shard=6,
        extra=lambda s, i: {"negative_captions": str([f"no cat in photo {s} {i}", f"without a dog {s} {i}"])},
    )  # fmt: skip
    return {"images": images, "negcap": negcap, "negmcq": negmcq, "ccneg": ccneg, "shards": shards,
            "model": tiny_model_dir(folder / "model")}  # fmt: skip


def args(data, train_source, out, *extra):
    return ["--model", data["model"], "--train", str(train_source), "--images", str(data["images"]),
            "--output", str(out), "--batch-size", "4", "--max-steps", "3", "--val-fraction", "0", "--no-progress",
            "--log-with", "none", "--no-export-transformers", "--tuning", "full", "--lr", "0.01", *extra]  # fmt: skip


def losses(out) -> list[float]:
    return [r["loss"] for r in metrics(out)]


@pytest.mark.e2e
@pytest.mark.parametrize(
    "source,extra",
    [
        ("shards", []),  # always streamed
        ("negcap", ["--stream"]),
        ("negcap", []),
        ("negmcq", ["--stream", "--objective", "negbench-mcq"]),
        ("negmcq", ["--objective", "negbench-mcq"]),
        ("ccneg", ["--stream", "--objective", "conclip"]),
        ("negbench", ["--recipe", "negbench", "--lr", "0.01"]),  # NegCap + NegMCQ joined, 0.99 CLIP + 0.01 MCQ
    ],
)
def test_each_format_trains(data, tmp_path, source, extra):
    train_source = f"{data['negcap']}::{data['negmcq']}" if source == "negbench" else data[source]
    summary = train(parse_config(args(data, train_source, tmp_path / "out", *extra)))
    assert summary["steps"] == 3
    got = losses(tmp_path / "out")
    assert len(got) == 3 and all(torch.isfinite(torch.tensor(got)))


@pytest.mark.e2e
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_losses_on_streamed_shards(data, tmp_path):
    steps = "24"  # 4 shards x 6 samples / batch 4 = 6 micro-batches per epoch: kills land mid-epoch
    common = ["--max-steps", steps, "--objective", "negbench-mcq", "--objective", "clip", "--dataloader-num-workers",
              "1", "--stream-shuffle", "5", "--stream-pool", "7"]  # fmt: skip
    reference = tmp_path / "reference"
    run_to_end([*TRAINER, *args(data, data["shards"], reference, *common)])
    expected = losses(reference)
    assert len(expected) == int(steps)

    out = tmp_path / "killed"
    killed_args = args(data, data["shards"], out, *common, "--save-every", "3")
    process = subprocess.Popen([*TRAINER, *killed_args], cwd=ROOT, env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 200
    while len(metrics(out)) < 8 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and 8 <= len(metrics(out)) < int(steps)
    assert sorted((out / "checkpoints").glob("step-*"))
    run_to_end([*TRAINER, *killed_args, "--resume"])
    assert losses(out) == expected
