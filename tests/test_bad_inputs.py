"""Bad inputs, tried as a new user would (issue 16): each ends in a one-line error naming the culprit, before any
expensive work, with nothing half-written. Every case drives the real CLI; the files are written by the tests."""

from __future__ import annotations

import json
import re

import open_clip
import pytest
import torch
from click.testing import CliRunner

from negation_plugins.cli import cli


def listing(root) -> set[str]:
    """Every path under ``root``, hidden temp files included."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def fails(args, *culprits, codes=(1, 2)):
    """Run ``negclip ARGS``; assert the exit code (1: bad input, 2: click's usage errors), no traceback and a last
    line ``Error: ...`` naming every culprit."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    lines = result.output.strip().splitlines()
    assert result.exit_code in codes, result.output
    assert "Traceback" not in result.output, result.output
    assert lines and lines[-1].startswith("Error: "), result.output
    for culprit in culprits:  # a plain string, or a compiled pattern
        found = culprit.search(lines[-1]) if isinstance(culprit, re.Pattern) else str(culprit) in lines[-1]
        assert found, (culprit, lines[-1])
    return lines[-1]


def succeeds(args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


# ---------------------------------------------------------------------------------------------------------------
# negclip convert


def tiny_clip(heads=4, quick_gelu=False, width=128):
    """An open_clip CLIP whose heads are 32 wide and whose activation is gelu: not what OpenAI used."""
    torch.manual_seed(0)
    return open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg={"layers": 1, "width": width, "head_width": width // heads, "patch_size": 8, "image_size": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": width, "heads": heads, "layers": 1},
        quick_gelu=quick_gelu,
    ).eval()


@pytest.fixture(scope="module")
def odd_heads_pth(tmp_path_factory):
    model = tiny_clip()
    path = tmp_path_factory.mktemp("odd") / "custom_clip.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_convert_says_what_it_assumed_and_takes_heads_and_activation(odd_heads_pth, tmp_path):
    from negation_plugins import load_clip

    path, model = odd_heads_pth
    result = CliRunner().invoke(cli, ["convert", str(path), str(tmp_path / "guess"), "--to", "open_clip"])
    assert result.exit_code == 0, result.output
    assert "64-wide attention heads and quick_gelu are assumed" in result.output
    assert "--text-heads" in result.output and "--activation gelu" in result.output

    out = tmp_path / "right"
    flags = ["--text-heads", "4", "--vision-heads", "4", "--activation", "gelu"]
    result = CliRunner().invoke(cli, ["convert", str(path), str(out), "--to", "open_clip", *flags])
    assert result.exit_code == 0 and "assumed" not in result.output, result.output
    tokens = open_clip.tokenize(["a street with no cars", "a red cube"])
    with torch.no_grad():
        expected = model.encode_text(tokens, normalize=True)
        got = load_clip(f"local-dir:{out}").model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_convert_heads_flag_on_a_non_openai_source_is_named(odd_heads_pth, tmp_path):
    path, _ = odd_heads_pth
    folder = tmp_path / "oc"
    succeeds(["convert", path, folder, "--to", "open_clip", "--text-heads", "4", "--vision-heads", "4"])
    fails(
        ["convert", f"local-dir:{folder}", tmp_path / "x", "--to", "transformers", "--text-heads", "2"], "--text-heads"
    )
    assert not (tmp_path / "x").exists()


def test_convert_in_place_is_refused_before_loading(odd_heads_pth, tmp_path):
    path, _ = odd_heads_pth
    full = tmp_path / "full"
    succeeds(["convert", path, full, "--to", "transformers", "--text-heads", "4", "--vision-heads", "4"])
    before = listing(full)
    fails(["convert", full, full, "--to", "transformers", "--kind", "text", "--overwrite"], str(full), "in place")
    assert listing(full) == before
    inside = tmp_path / "ckpt"
    inside.mkdir()
    (inside / "model.pth").write_bytes(path.read_bytes())
    fails(["convert", inside / "model.pth", inside, "--to", "open_clip", "--overwrite"], "in place")
    assert listing(inside) == {"model.pth"}


def bad_output(tmp_path, problem: str):
    """An output path that cannot be written: a file where a folder is wanted (or the reverse), a file in the
    way of its parent folder, or a folder nobody can create files in (/proc refuses even root)."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir(exist_ok=True)
    return {
        "file": tmp_path / "a_file",
        "dir": tmp_path / "a_dir",
        "parent-is-file": tmp_path / "a_file" / "sub",
        "unwritable": "/proc/negclip/out",
    }[problem]


OUTPUT_PROBLEMS = {  # click's own path checks say "directory", ours "folder"
    "file": "is a file",
    "dir": re.compile("is a (folder|directory)"),
    "parent-is-file": "is a file, not a folder",
    "unwritable": "cannot create files in /proc",
}


@pytest.mark.parametrize("problem", ["file", "parent-is-file", "unwritable"])
def test_convert_output_checked_before_loading(odd_heads_pth, tmp_path, problem):
    path, _ = odd_heads_pth
    dst, why = bad_output(tmp_path, problem), OUTPUT_PROBLEMS[problem]
    before = listing(tmp_path)
    fails(["convert", path, dst, "--to", "open_clip"], "DST", why)
    assert listing(tmp_path) == before


def test_transformers_folder_without_weights(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip", "architectures": ["CLIPModel"]}))
    fails(["convert", folder, tmp_path / "out", "--to", "open_clip"], str(folder), "weights")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------
# negclip push


@pytest.fixture
def full_output(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    (root / "open_clip_config.json").write_text("{}")
    (root / "open_clip_model.safetensors").write_bytes(b"")
    (root / "README.md").write_text("# card\n")
    return root


def test_push_adapter_only_on_a_fully_tuned_output(full_output):
    fails(["push", full_output, "me/repo", "--adapter-only", "--token", "t"], "--adapter-only", "no adapter files")


def test_push_without_token(full_output, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    fails(["push", full_output, "me/repo", "--endpoint", "http://127.0.0.1:9"], "no Hub token", "--token")


def test_push_to_a_bad_or_unreachable_endpoint(full_output, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    fails(["push", full_output, "me/repo", "--endpoint", "localhost:9", "--token", "t"], "--endpoint", "http")
    fails(
        ["push", full_output, "me/repo", "--endpoint", "http://127.0.0.1:9", "--token", "t"],
        "cannot reach the Hub at http://127.0.0.1:9",
    )


# ---------------------------------------------------------------------------------------------------------------
# negclip generate


@pytest.fixture
def captions(tmp_path):
    """Two real images and a JSONL caption table naming them."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for name, colour in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (16, 16), colour).save(images / name)
    table = tmp_path / "captions.jsonl"
    rows = [{"image": "a.png", "caption": "a red cube on a table"}, {"image": "b.png", "caption": "a blue ball"}]
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return table, images


def generate_args(captions, out, *extra):
    table, images = captions
    return ["generate", "--captions", table, "--images", images, "--out", out, "--no-progress", *extra]


@pytest.mark.parametrize("size", ["0", "-5"])
def test_generate_chunk_size_must_be_positive(captions, tmp_path, size):
    before = listing(tmp_path)
    fails(generate_args(captions, tmp_path / "out.jsonl", "--chunk-size", size), "--chunk-size", size)
    assert listing(tmp_path) == before


def test_generate_with_nothing_to_negate_writes_nothing(captions, tmp_path):
    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("zebra\n")
    before = listing(tmp_path)
    args = generate_args(captions, tmp_path / "out.jsonl", "--kinds", "presence", "--vocabulary", vocabulary)
    fails(args, "captions.jsonl", "none of the 2 captions could be negated", "presence_no_object 2")
    assert listing(tmp_path) == before


def test_generate_with_no_caption_left_writes_nothing(captions, tmp_path):
    table, images = captions
    for image in images.iterdir():
        image.write_bytes(b"not a png")
    before = listing(tmp_path)
    fails(generate_args(captions, tmp_path / "out.jsonl", "--skip-bad-images"), "no captions to negate", "2 skipped")
    assert listing(tmp_path) == before


def test_generate_empty_vocabulary_file_is_named(captions, tmp_path):
    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("\n  \n")
    fails(generate_args(captions, tmp_path / "out.jsonl", "--vocabulary", vocabulary), "--vocabulary", "vocab.txt")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("problem", ["dir", "parent-is-file", "unwritable"])
def test_generate_output_checked_before_reading(captions, tmp_path, problem):
    out, why = bad_output(tmp_path, problem), OUTPUT_PROBLEMS[problem]
    before = listing(tmp_path)
    fails(generate_args(captions, out), "--out", why)
    assert listing(tmp_path) == before


def test_generate_into_a_missing_folder_creates_it(captions, tmp_path):
    succeeds(generate_args(captions, tmp_path / "new" / "deeper" / "out.jsonl"))
    assert (tmp_path / "new" / "deeper" / "out.jsonl").stat().st_size > 0


# ---------------------------------------------------------------------------------------------------------------
# the trainer (negclip finetune = python -m trainers.finetune)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from negation_plugins.testing import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def scene(tmp_path, names, presence=True):
    """Images (32 px squares) and negation records for them: one absence and optionally one presence each."""
    from PIL import Image

    images = tmp_path / "scene"
    images.mkdir(exist_ok=True)
    rows = []
    for i, name in enumerate(names):
        Image.new("RGB", (32, 32), (40 * i % 255, 90, 200)).save(images / name)
        caption = f"a red cube and a blue ball number {i}"
        rows.append({"image": name, "caption": caption, "negated_caption": f"{caption}, no dog", "kind": "absence"})
        if presence:
            rows.append(
                {"image": name, "caption": caption, "negated_caption": "a blue ball, no cube", "kind": "presence"}
            )
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return records, images


def finetune(model, records, images, out, *extra):
    return ["finetune", "--model", model, "--train", records, "--images", images, "--output", out, "--batch-size",
            "4", "--max-steps", "1", "--eval-every", "1", "--no-progress", "--log-with", "none",
            "--no-export-transformers", *extra]  # fmt: skip


def trainer_fails(args, *culprits):
    """The trainer prints ``error: ...`` on one line and exits 2."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    last = [line for line in result.output.strip().splitlines() if line.startswith("error: ")]
    assert last, result.output
    for culprit in culprits:
        assert culprit in last[-1], (culprit, last[-1])


@pytest.mark.parametrize("val_fraction", ["0.5", "0"], ids=["one-image-per-split", "one-image-no-val"])
def test_one_image_per_split_trains(tiny_model, tmp_path, val_fraction):
    """MCQ options for an image alone in its split are drawn from its own false captions: no endless loop."""
    names = ["a.png", "b.png"] if val_fraction == "0.5" else ["a.png"]
    records, images = scene(tmp_path, names)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, [str(a) for a in finetune(tiny_model, records, images, out, "--val-fraction", val_fraction)]
    )
    assert result.exit_code == 0, result.output
    assert (out / "results.json").is_file()
    summary = json.loads((out / "results.json").read_text())
    assert summary["train_examples"] == 1 and summary["val_examples"] == len(names) - 1


def test_one_image_without_false_captions_fails_clearly(tiny_model, tmp_path):
    records, images = scene(tmp_path, ["a.png"], presence=False)
    out = tmp_path / "out"
    trainer_fails(finetune(tiny_model, records, images, out, "--val-fraction", "0"), "a.png", "no false caption")
    assert not out.exists()


def test_on_the_fly_negation_with_objectives_that_ignore_it(tiny_model, tmp_path):
    records, images = scene(tmp_path, ["a.png", "b.png"])
    out = tmp_path / "out"
    trainer_fails(
        finetune(tiny_model, records, images, out, "--negation", "on-the-fly"), "--negation on-the-fly", "tng"
    )
    assert not out.exists()


@pytest.mark.parametrize("cache", ["--cache-image-features", "--no-cache-image-features"])
@pytest.mark.parametrize("damage", ["truncated", "not-an-image"])
def test_trainer_names_an_image_it_cannot_decode(tiny_model, tmp_path, cache, damage):
    records, images = scene(tmp_path, ["a.png", "b.png", "c.png"])
    data = (images / "b.png").read_bytes()
    (images / "b.png").write_bytes(data[: len(data) // 2] if damage == "truncated" else b"GIF89a" + b"\0" * 64)
    out = tmp_path / "out"
    trainer_fails(finetune(tiny_model, records, images, out, cache), "b.png")
    assert not out.exists()


@pytest.mark.parametrize("problem", ["file", "parent-is-file", "unwritable"])
def test_trainer_output_checked_before_loading(tiny_model, tmp_path, problem):
    records, images = scene(tmp_path, ["a.png", "b.png"])
    out, why = bad_output(tmp_path, problem), OUTPUT_PROBLEMS[problem]
    before = listing(tmp_path)
    trainer_fails(finetune(tiny_model, records, images, out), "--output", why)
    assert listing(tmp_path) == before


# ---------------------------------------------------------------------------------------------------------------
# negclip eval


def mcq_csv(tmp_path, answer="1", image="a.png"):
    records, images = scene(tmp_path, ["a.png", "b.png"])
    path = tmp_path / "mcq.csv"
    header = "image_path,correct_answer,caption_0,caption_1,caption_2,caption_3,correct_answer_template\n"
    rows = [f"{image},{answer},a cube,a ball,no cube,a dog,negative\n", "b.png,0,a ball,a cube,a dog,a cat,positive\n"]
    path.write_text(header + "".join(rows))
    return path, images


def eval_args(model, csv, images, out, *extra):
    return ["eval", model, "--bench", "mcq", "-o", f"mcq.csv={csv}", "-o", f"mcq.images={images}", "--out", out,
            "--quiet", "--no-plot", *extra]  # fmt: skip


def test_eval_mcq_fractional_answer_is_refused(tiny_model, tmp_path):
    csv, images = mcq_csv(tmp_path, answer="1.7")
    fails(eval_args(tiny_model, csv, images, tmp_path / "report"), "mcq.csv: row 1", "correct_answer '1.7'")
    assert not (tmp_path / "report").exists()


def test_eval_mcq_names_an_image_it_cannot_decode(tiny_model, tmp_path):
    csv, images = mcq_csv(tmp_path)
    data = (images / "a.png").read_bytes()
    (images / "a.png").write_bytes(data[: len(data) // 2])
    fails(eval_args(tiny_model, csv, images, tmp_path / "report"), "a.png")
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("problem", ["file", "parent-is-file", "unwritable"])
def test_eval_outputs_checked_before_loading(tiny_model, tmp_path, problem):
    csv, images = mcq_csv(tmp_path)
    out, why = bad_output(tmp_path, problem), OUTPUT_PROBLEMS[problem]
    before = listing(tmp_path)
    fails(eval_args(tiny_model, csv, images, out), "--out", why)
    card = bad_output(tmp_path, "dir" if problem == "file" else problem)
    fails(eval_args(tiny_model, csv, images, tmp_path / "report", "--model-card", card), "--model-card")
    assert listing(tmp_path) == before


def test_eval_missing_model_card_is_named_before_the_work(tiny_model, tmp_path):
    csv, images = mcq_csv(tmp_path)
    fails(eval_args(tiny_model, csv, images, tmp_path / "report", "--model-card", tmp_path / "nope.md"), "nope.md")
    assert not (tmp_path / "report").exists()


# ---------------------------------------------------------------------------------------------------------------
# the other commands' outputs and counts


def other_command(name, tmp_path, out):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a street without cars\n")
    return {
        "world make": ["world", "make", "--out", out, "--n-images", "4"],
        "world pretrain": ["world", "pretrain", "--world", tmp_path, "--out", out],
        "demo": ["demo", "--output", out],
        "t2i-eval": ["t2i-eval", "pipe", "--encoder", "enc", "--prompts", prompts, "--judge", "clip:x", "--out", out],
    }[name]


@pytest.mark.parametrize("problem", ["file", "parent-is-file", "unwritable"])
@pytest.mark.parametrize("command", ["world make", "world pretrain", "demo", "t2i-eval"])
def test_other_commands_check_their_output_folder_first(tmp_path, command, problem):
    out, why = bad_output(tmp_path, problem), OUTPUT_PROBLEMS[problem]
    args = other_command(command, tmp_path, out)
    before = listing(tmp_path)
    fails(args, "--out", why)
    assert listing(tmp_path) == before


def test_world_pretrain_names_a_folder_that_is_no_world(tmp_path):
    before = listing(tmp_path)
    fails(["world", "pretrain", "--world", tmp_path, "--out", tmp_path / "model"], "--world", "not a world folder")
    assert listing(tmp_path) == before


@pytest.mark.parametrize(
    "args, flag",
    [
        (["world", "make", "--image-size", "0"], "--image-size"),
        (["demo", "--max-steps", "0"], "--max-steps"),
        (["t2i-eval", "pipe", "--encoder", "e", "--judge", "clip:x", "--steps", "0"], "--steps"),
    ],
)
def test_impossible_counts_are_usage_errors(tmp_path, args, flag):
    prompts = tmp_path / "p.txt"
    prompts.write_text("no cars\n")
    extra = ["--prompts", prompts] if args[0] == "t2i-eval" else []
    fails([*args, *extra, "--out" if args[0] != "demo" else "--output", tmp_path / "out"], flag, codes=(2,))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bench", ["valse-existence", "negrefcocog"])
def test_benchmarks_name_an_image_they_cannot_decode(tiny_model, tmp_path, bench):
    records, images = scene(tmp_path, ["a.png", "b.png"])
    data = (images / "b.png").read_bytes()
    (images / "b.png").write_bytes(data[: len(data) // 2])
    names = ["a.png", "b.png"]
    if bench == "valse-existence":
        items = {str(i): {"image_file": n, "caption": "a cube", "foil": "no cube", "mturk": {"caption": 3}}
                 for i, n in enumerate(names)}  # fmt: skip
    else:
        boxes = [[0, 0, 16, 16], [16, 16, 16, 16]]
        items = [{"image": n, "phrase": "the cube, not the ball", "ref_bbox": boxes[0], "bbox_list": boxes}
                 for n in names]  # fmt: skip
    file = tmp_path / "bench.json"
    file.write_text(json.dumps(items))
    args = ["eval", tiny_model, "--bench", bench, "-o", f"{bench}.file={file}", "-o", f"{bench}.images={images}",
            "--out", tmp_path / "report", "--quiet"]  # fmt: skip
    fails(args, bench, "b.png")
    assert not (tmp_path / "report").exists()


def test_trainer_eval_mcq_names_an_image_it_cannot_decode(tiny_model, tmp_path):
    csv, images = mcq_csv(tmp_path)
    data = (images / "b.png").read_bytes()
    (images / "b.png").write_bytes(data[: len(data) // 2])
    records = tmp_path / "records.jsonl"
    out = tmp_path / "out"
    (images / "c.png").write_bytes((images / "a.png").read_bytes())  # training images stay readable
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    records.write_text("".join(json.dumps(r | {"image": "c.png"} if r["image"] == "b.png" else r) + "\n" for r in rows))
    trainer_fails(finetune(tiny_model, records, images, out, "--eval-mcq", csv), "b.png")
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--eval-mcq-images", "--push-to-hub"])
def test_trainer_refuses_before_training(tiny_model, tmp_path, monkeypatch, flag):
    from huggingface_hub import constants

    records, images = scene(tmp_path, ["a.png", "b.png"])
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    value = str(tmp_path / "nope") if flag == "--eval-mcq-images" else "me/repo"
    out = tmp_path / "out"
    trainer_fails(finetune(tiny_model, records, images, out, flag, value), flag)
    assert not out.exists()


@pytest.mark.parametrize("bench", ["mcq", "coco-retrieval"])
def test_eval_option_typo_is_named_before_any_model_loads(tmp_path, bench):
    required = {"mcq": ["csv=x.csv"], "coco-retrieval": ["captions=c.json", "images=i"]}[bench]
    options = [a for pair in required for a in ("-o", f"{bench}.{pair}")]
    line = fails(["eval", "no-such-model", "--bench", bench, *options, "-o", f"{bench}.batchsize=8", "--out", tmp_path / "r"],
                 "batchsize")  # fmt: skip
    assert "no-such-model" not in line and "csv," not in line.split("options:")[0]
    assert not (tmp_path / "r").exists()


def test_convert_into_a_non_empty_folder_is_refused_before_loading(tmp_path):
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    # SRC does not even exist: the refusal comes first, without loading anything
    fails(["convert", tmp_path / "missing.pth", dst, "--to", "open_clip"], "DST", "taken", "--overwrite")
    assert listing(dst) == {"keep.txt"}
