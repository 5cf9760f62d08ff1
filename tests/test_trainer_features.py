"""The image-feature store and the DataLoader pipeline: two gloo processes each embed half the images, a second run
embeds none, a changed image or another preprocessing is embedded again; batches do not depend on the worker count."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from negation_plugins.testing import tiny_model_dir
from tests.test_trainer_accelerate import ROOT, environment, free_port, metrics, trainer_args
from tests.test_trainer_support import write_records
from trainers.config import parse_config
from trainers.finetune import train


@pytest.fixture(scope="module")
def setup(world_coco, tmp_path_factory):
    folder = tmp_path_factory.mktemp("features")
    write_records(world_coco, folder / "records.jsonl", limit=200)
    return {"spec": tiny_model_dir(folder / "model"), "records": folder / "records.jsonl", "images": world_coco.images}


def n_images(records: Path) -> int:
    return len({json.loads(line)["image"] for line in records.read_text().splitlines()})


def test_two_processes_each_embed_half_and_a_second_run_embeds_none(setup, tmp_path):
    store = tmp_path / "store"
    accelerate = Path(sys.executable).with_name("accelerate")

    def launch(out):
        command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
        command += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
        args = trainer_args(setup, out, "--max-steps", "2", "--feature-store", str(store))
        done = subprocess.run(
            [*command, "-m", "trainers.finetune", *args],
            cwd=ROOT,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads((out / "results.json").read_text())

    first = launch(tmp_path / "first")
    total = first["image_features"]["computed"]  # the images of the examples the omni objective can use
    assert 0.5 * n_images(setup["records"]) < total <= n_images(setup["records"])
    assert first["image_features"]["from_store"] == 0
    assert sorted(first["image_features"]["per_process"]) == [total // 2, total - total // 2]
    assert not [p for p in store.rglob("*") if p.name.startswith(".")]  # no temp file left behind
    second = launch(tmp_path / "second")
    assert second["image_features"] == {"computed": 0, "from_store": total, "per_process": [0, 0]}
    assert set(first["seconds"]) == {"train", "validation", "features"} and first["mixed_precision"] == "no"


def test_changed_image_and_other_preprocessing_are_embedded_again(setup, tmp_path):
    from negation_plugins import load_clip
    from trainers.features import FeatureStore, store_key

    images = tmp_path / "images"
    images.mkdir()
    names = sorted({json.loads(line)["image"] for line in setup["records"].read_text().splitlines()})
    for name in names:
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        (images / name).write_bytes((Path(setup["images"]) / name).read_bytes())
    store = tmp_path / "store"

    def run(out):
        args = trainer_args(setup, out, "--max-steps", "1", "--feature-store", str(store), "--images", str(images))
        return train(parse_config(args))["image_features"]

    used = run(tmp_path / "a")["computed"]
    assert used > 0.5 * len(names)
    for name in names:  # same paths, different file identities
        os.utime(images / name, ns=(1, 1))
    assert run(tmp_path / "b") == {"computed": used, "from_store": 0, "per_process": [used]}
    assert run(tmp_path / "c") == {"computed": 0, "from_store": used, "per_process": [0]}

    bundle = load_clip(setup["spec"])
    key = store_key(bundle.model.visual, bundle.preprocess)
    other = store_key(bundle.model.visual, lambda image: image)
    assert key != other and len(FeatureStore(store, key)) == 2 * used


@pytest.mark.parametrize("extra", [(), ("--no-cache-image-features",)])
def test_losses_do_not_depend_on_the_number_of_workers(setup, tmp_path, extra):
    """The sampler hands out the plan's micro-batch numbers; workers only build them."""
    losses = []
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}"
        args = trainer_args(setup, out, "--max-steps", "3", "--dataloader-num-workers", workers, *extra)
        train(parse_config(args))
        losses.append([r["loss"] for r in metrics(out)])
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_in_training_mcq_uses_the_store_and_splits_across_processes(setup, world_coco, tmp_path, monkeypatch):
    """--eval-mcq: its images come from the feature store (a warm store decodes no image at all), two gloo processes
    each score part of the rows and agree with one process, the rows are capped, and the score is the mcq
    benchmark's on the same rows."""
    from negation_plugins import images as image_module
    from negation_plugins import load_clip
    from negation_plugins.benchmarks.mcq import run_mcq

    rows = Path(world_coco.mcq_csv).read_text().splitlines()
    csv = tmp_path / "mcq.csv"
    csv.write_text("\n".join(rows[:25]) + "\n")  # header + 24 rows
    store = tmp_path / "store"
    mcq = ("--eval-mcq", str(csv), "--eval-mcq-images", str(world_coco.images), "--feature-store", str(store))
    one = train(
        parse_config(trainer_args(setup, tmp_path / "one", "--max-steps", "1", "--eval-mcq-max-rows", "24", *mcq))
    )
    before = one["results_before"]["mcq"]
    assert before["n_items"] == 24 and before["n_rows_in_csv"] == 24
    base = run_mcq(load_clip(setup["spec"]), csv, world_coco.images, progress=False)
    assert abs(before["accuracy"] - base["accuracy"]) <= 1 / 24  # fp16 store rows: at most a tie flips

    command = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--main_process_port", str(free_port()), "-m", "trainers.finetune"]
    args = trainer_args(setup, tmp_path / "two", "--max-steps", "1", "--eval-mcq-max-rows", "24", *mcq)
    done = subprocess.run([*command, *args], cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["image_features"]["computed"] == 0  # training and MCQ images: all from the store
    assert two["results_before"]["mcq"] == before

    decoded = []
    real = image_module.load_rgb
    monkeypatch.setattr(image_module, "load_rgb", lambda path: decoded.append(path) or real(path))
    capped = train(
        parse_config(trainer_args(setup, tmp_path / "capped", "--max-steps", "2", "--eval-mcq-max-rows", "8", *mcq))
    )
    assert decoded == [] and capped["evaluations"] >= 2
    assert capped["results_before"]["mcq"]["n_items"] == 8
    assert capped["results_before"]["mcq"]["n_rows_in_csv"] == 24


def test_token_cache_gives_the_tokenizers_rows_for_known_and_new_texts(setup):
    """Texts of the records are tokenized once up front; texts made during training (on-the-fly negations, swapped
    MCQ options) are tokenized when first seen; either way the rows are the tokenizer's."""
    from accelerate import Accelerator

    from negation_plugins import load_clip
    from trainers.data import TokenCache

    tokenizer = load_clip(setup["spec"]).tokenizer
    cache = TokenCache(tokenizer)
    assert cache.fill(["a red cube.", "no ball here.", "a red cube."], Accelerator(cpu=True)) == 2
    texts = ["no ball here.", "a star but no ring.", "a red cube.", "a star but no ring."]
    rows = cache(texts)
    assert rows.dtype == torch.int32 and torch.equal(rows.long(), tokenizer(texts))
    assert set(cache.extra) == {"a star but no ring."}


# ------------------------------------------------------------------------------------- the store on its own and faults


def rows_of(identities: list[str], dim: int = 8) -> torch.Tensor:
    """Features that follow from the identity alone, so any reader can tell a right row from a wrong one."""
    seeds = [
        int.from_bytes(hashlib.blake2b(identity.encode(), digest_size=4).digest(), "little") for identity in identities
    ]
    return torch.stack([torch.randn(dim, generator=torch.Generator().manual_seed(s)) for s in seeds]).half()


def test_store_api_keys_any_identity_and_splits_large_writes_into_parts(tmp_path, monkeypatch):
    from trainers import features
    from trainers.features import FeatureStore

    monkeypatch.setattr(features, "PART_ROWS", 16)
    store = FeatureStore(tmp_path, "k")
    keys = [f"shards/cc12m-{n // 10:04d}.tar#{n:09d}" for n in range(40)]  # webdataset shard#key identities
    assert store.missing(keys + keys[:3]) == keys
    assert len(store.write(keys, rows_of(keys))) == 3  # 16 + 16 + 8 rows
    assert store.missing(keys + ["other.tar#1"]) == ["other.tar#1"]
    picked = [keys[7], keys[39], keys[0], keys[7]]
    assert torch.equal(FeatureStore(tmp_path, "k").get(picked), rows_of(picked))
    with pytest.raises(KeyError, match="no features for 1 images"):
        store.get([keys[0], "other.tar#1"])


def test_damaged_part_is_moved_aside_and_its_rows_recomputed(tmp_path, caplog):
    from trainers.features import FeatureStore

    keys = [f"image-{n}" for n in range(20)]
    store = FeatureStore(tmp_path, "k")
    (first,) = store.write(keys[:10], rows_of(keys[:10]))
    (second,) = store.write(keys[10:], rows_of(keys[10:]))
    first.write_bytes(first.read_bytes()[:-100])  # truncated, as a full disk or a killed copy leaves it
    data = bytearray(second.read_bytes())
    data[-4:] = b"\0\0\0\0"  # right length, damaged rows
    second.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        assert FeatureStore(tmp_path, "k").missing(keys) == keys
    assert str(first) in caplog.text and str(second) in caplog.text and "moved aside" in caplog.text
    assert sorted(p.name.split(".corrupt-")[0] for p in store.folder.glob("*.corrupt-*")) == sorted(
        [first.name, second.name]
    )
    store.write(keys, rows_of(keys))
    assert torch.equal(FeatureStore(tmp_path, "k").get(keys), rows_of(keys))


def test_a_part_of_the_earlier_store_format_is_set_aside_not_read(tmp_path, caplog):
    from safetensors.torch import save_file

    from trainers.features import FeatureStore

    (tmp_path / "k").mkdir()
    old = tmp_path / "k" / "part-0123456789abcdef0123456789abcdef.safetensors"
    save_file({"features": rows_of(["a"])}, str(old), metadata={"images": json.dumps(["a"])})
    with caplog.at_level("WARNING"):
        assert FeatureStore(tmp_path, "k").missing(["a"]) == ["a"]
    assert "written by an earlier version of the store" in caplog.text and not old.exists()


SHARE_STORE = """
import sys, time
from pathlib import Path
from trainers.features import FeatureStore

root, worker, rounds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
(root / f"ready-{worker}").touch()
while not all((root / f"ready-{w}").exists() for w in (0, 1)):  # start together
    time.sleep(0.01)
store = FeatureStore(root, "k")
for n in range(rounds):  # write new rows, then read and check every row either process has written so far
    keys = [f"w{worker}-r{n}-{i}" for i in range(50)]
    store.write(keys, rows_of(keys))
    done = [f"w{w}-r{m}-{i}" for w in (0, 1) for m in range(rounds) for i in range(50)]
    lacking = set(store.missing(done))
    have = [k for k in done if k not in lacking]
    assert torch.equal(store.get(have), rows_of(have))
print(len(have))
"""


def test_two_processes_writing_and_reading_one_store_at_once_see_only_whole_rows(tmp_path):
    """A torn part would fail a reader's check of its rows; a lost part would leave rows missing at the end."""
    from trainers.features import FeatureStore

    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import hashlib, torch\n" + inspect.getsource(rows_of) + SHARE_STORE,
                str(tmp_path),
                str(worker),
                "40",
            ],
            cwd=ROOT,
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in (0, 1)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    every = [f"w{w}-r{n}-{i}" for w in (0, 1) for n in range(40) for i in range(50)]
    assert FeatureStore(tmp_path, "k").missing(every) == []
    assert torch.equal(FeatureStore(tmp_path, "k").get(every), rows_of(every))
    assert len(list((tmp_path / "k").glob("part-*.safetensors"))) == 80
    assert not list((tmp_path / "k").glob(".*"))  # no temp file left


def launch_trainer(setup, out, store, *extra, preexec_fn=None) -> subprocess.Popen:
    args = trainer_args(setup, out, "--max-steps", "1", "--feature-store", str(store), *extra)
    return subprocess.Popen(
        [sys.executable, "-m", "trainers.finetune", *args],
        cwd=ROOT,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )


def test_two_trainer_runs_sharing_a_store_at_once_both_get_correct_features(setup, tmp_path):
    from negation_plugins import load_clip
    from trainers.features import FeatureStore, embed_files, image_identity, store_key

    store = tmp_path / "store"
    runs = [launch_trainer(setup, tmp_path / name, store) for name in ("a", "b")]
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr[-3000:]
    counts = [json.loads((tmp_path / name / "results.json").read_text())["image_features"] for name in ("a", "b")]
    used = counts[0]["computed"] + counts[0]["from_store"]
    assert used == counts[1]["computed"] + counts[1]["from_store"] > 0
    bundle = load_clip(setup["spec"])
    names = sorted({json.loads(line)["image"] for line in setup["records"].read_text().splitlines()})
    files = [Path(setup["images"]) / name for name in names]
    reader = FeatureStore(store, store_key(bundle.model.visual, bundle.preprocess))
    present = [f for f in files if not reader.missing([image_identity(f)])]
    assert len(present) == used
    expected = embed_files(bundle.model, bundle.preprocess, present, workers=0).half()
    assert torch.allclose(reader.get([image_identity(f) for f in present]).float(), expected.float(), atol=2e-3)


def limit_file_size(size: int):
    """preexec_fn: a file-size limit (RLIMIT_FSIZE) in the child, the unprivileged way to fill a disk."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))


def test_feature_write_on_a_full_disk_ends_in_one_line_and_a_rerun_succeeds(setup, tmp_path):
    store = tmp_path / "store"
    # no DataLoader workers: a file-size limit also caps the shared-memory files through which workers hand batches
    run = launch_trainer(
        setup, tmp_path / "full", store, "--dataloader-num-workers", "0", preexec_fn=limit_file_size(2_000)
    )
    _, stderr = run.communicate(timeout=300)
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 2 and len(lines) == 1, stderr[-3000:]
    assert "file size limit exceeded while writing" in lines[0] and "part-" in lines[0] and str(store) in lines[0]
    assert "Traceback" not in stderr
    assert not [p for p in store.rglob("*") if p.name.startswith(".")]  # no partial part left
    rerun = launch_trainer(setup, tmp_path / "again", store)
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-3000:]
