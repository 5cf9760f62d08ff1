"""A full disk in `negclip generate`, `negclip eval` and `negclip convert`: one line naming the path, earlier complete
output intact, and the same command succeeds (resuming where it can) once there is room. The disk is "filled"
without root: the child process gets a file-size limit (RLIMIT_FSIZE), so its writes fail with EFBIG (Python
ignores SIGXFSZ); ENOSPC and EDQUOT take the same path (negation_plugins.atomic.DISK_FULL_REASONS)."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from negation_plugins.atomic import DiskFullError, disk_writes
from tests.test_bad_inputs import eval_args, mcq_csv, succeeds, tiny_model  # noqa: F401 (tiny_model is a fixture)

NEGCLIP = Path(sys.executable).with_name("negclip")


def limit_file_size(size: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))


def negclip(*args, limit: int) -> subprocess.CompletedProcess:
    """``negclip ARGS`` in a child process with a file-size limit (the runs without one go in-process: faster)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [str(NEGCLIP), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_file_size(limit),
    )


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def test_python_ignores_sigxfsz_so_a_size_limit_is_an_error_not_a_kill(tmp_path):
    assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN
    with pytest.raises(DiskFullError, match=f"file size limit exceeded while writing {tmp_path / 'x'}"):
        with disk_writes(tmp_path / "x"):
            raise OSError(27, "File too large")
    with pytest.raises(DiskFullError, match="no space left on device while writing"):
        with disk_writes(tmp_path / "y"):
            raise RuntimeError("I/O error: No space left on device (os error 28)")  # safetensors' Rust error
    with pytest.raises(DiskFullError, match="no space left on device while writing"):  # torch.save's, no errno
        with disk_writes(tmp_path / "w"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    with pytest.raises(PermissionError):  # other errors pass through unchanged
        with disk_writes(tmp_path / "z"):
            raise PermissionError(13, "Permission denied")


TORCH_SAVE = """
import sys, torch
from negation_plugins.atomic import DiskFullError, atomic_write
try:
    atomic_write(sys.argv[1], lambda tmp: torch.save({"a": torch.zeros(100000)}, tmp))
except DiskFullError as error:
    print(error.message)
"""


def test_torch_save_under_a_file_size_limit_is_a_disk_full_error(tmp_path):
    """torch.save reports no errno; a process with a file-size limit gets the limit's message."""
    target = tmp_path / "state.pt"
    done = subprocess.run(
        [sys.executable, "-c", TORCH_SAVE, str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit_file_size(10_000),
    )
    assert done.stdout.startswith(f"file size limit exceeded while writing {target}"), done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []


def captions(tmp_path: Path, n: int) -> tuple[Path, Path]:
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8), (1, 2, 3)).save(images / name)
    annotations = [
        {"id": i, "image_id": 1 + i % 2, "caption": f"a dog number {i} sleeping on a couch."} for i in range(n)
    ]
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
                                "annotations": annotations}))  # fmt: skip
    return path, images


def test_generate_on_a_full_disk_keeps_its_progress_and_the_rerun_resumes(tmp_path):
    path, images = captions(tmp_path, 120)
    out = tmp_path / "out.jsonl"
    args = ["generate", "--captions", path, "--images", images, "--chunk-size", "10", "--no-progress", "--out", out]
    line = one_error_line(negclip(*args, limit=6000))
    assert "file size limit exceeded while writing" in line and str(out) in line
    assert not out.exists()
    progress = json.loads(next(tmp_path.glob("*progress*")).read_text())
    assert progress["chunks_done"] >= 1  # the complete chunks are kept for the rerun

    done = succeeds(args)
    summary = json.loads(next(ln for ln in reversed(done.splitlines()) if ln.startswith("{")))
    assert summary["resumed_from_chunk"] == progress["chunks_done"]
    succeeds([*args[:-1], tmp_path / "whole.jsonl"])  # the same run, never interrupted
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_eval_on_a_full_disk_keeps_the_last_report_and_a_rerun_succeeds(tiny_model, tmp_path):  # noqa: F811
    csv, images = mcq_csv(tmp_path)
    report = tmp_path / "report"
    args = eval_args(tiny_model, csv, images, report, "--cache-dir", tmp_path / "cache")
    succeeds(args[:-2])  # no cache yet: the run below has embeddings to save
    before = {p.name: p.read_bytes() for p in report.iterdir()}

    done = negclip(*args, limit=300)
    line = one_error_line(done)
    assert "file size limit exceeded while writing" in line and str(report) in line
    assert "embedding cache not saved: file size limit exceeded while writing" in done.stderr  # a warning only
    assert {p.name: p.read_bytes() for p in report.iterdir()} == before  # the earlier report, whole
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temporary file left

    succeeds(args)


def test_convert_on_a_full_disk_keeps_the_old_folder_and_a_rerun_succeeds(tiny_model, tmp_path):  # noqa: F811
    dst = tmp_path / "converted"
    succeeds(["convert", tiny_model, dst, "--to", "open_clip"])
    before = {p.name: p.read_bytes() for p in dst.iterdir()}

    line = one_error_line(negclip("convert", tiny_model, dst, "--to", "open_clip", "--overwrite", limit=4096))
    assert "file size limit exceeded while writing" in line and str(dst) in line
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left

    succeeds(["convert", tiny_model, dst, "--to", "open_clip", "--overwrite"])
