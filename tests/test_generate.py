"""`negclip generate` on the synthetic world: every record checked against the instances; kill -9 and resume."""

import json
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from negation_plugins.cli import cli
from negation_plugins.data.io import read_coco_captions, read_negation_records
from negation_plugins.data.language import mention_pattern
from negation_plugins.testing import stop_generate_midway


def _generate(*args):
    return CliRunner().invoke(cli, ["generate", "--no-progress", *args], catch_exceptions=False)


def test_template_and_annotations_on_world_are_verifiably_right(world_coco, tmp_path):
    out = tmp_path / "negations.jsonl"
    result = _generate("--captions", world_coco.captions, "--instances", world_coco.instances,
                       "--images", world_coco.images, "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.splitlines()[-1])
    records = read_negation_records(out)
    truth = {i.image: set(i.objects) for i in read_coco_captions(world_coco.captions, world_coco.instances).items}
    n_captions = sum(1 for _ in read_coco_captions(world_coco.captions).items)
    kinds = {"absence": 0, "presence": 0}
    for record in records:
        kinds[record.kind] += 1
        (obj,) = record.objects
        if record.kind == "absence":
            assert obj not in truth[record.image], record
            assert record.verifier == "annotations"
        else:
            assert obj in truth[record.image], record
        # The object is mentioned exactly once in the negated caption: as the negated one, never affirmed.
        assert len(mention_pattern(obj).findall(record.negated_caption)) == 1, record
    assert kinds == {"absence": summary["absence"], "presence": summary["presence"]}
    assert kinds["absence"] == kinds["presence"] == n_captions  # every world image has an absent object
    assert not out.with_name(out.name + ".progress.json").exists()


def test_refuses_existing_output_and_bad_images_are_counted_only_with_flag(world_coco, tmp_path):
    out = tmp_path / "n.jsonl"
    out.write_text("keep me\n")
    args = ["--captions", world_coco.captions, "--images", world_coco.images, "--out", out]
    result = CliRunner().invoke(cli, ["generate", "--no-progress", *map(str, args)])
    assert result.exit_code != 0 and "already exists; pass --overwrite" in result.output
    assert out.read_text() == "keep me\n"
    # A copy of the captions whose first image is missing from a fresh image folder.
    images = tmp_path / "images"
    images.mkdir()
    data = json.loads(Path(world_coco.captions).read_text())
    data["images"] = data["images"][:3]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in {i["id"] for i in data["images"]}]
    for image in data["images"][1:]:
        (images / image["file_name"]).write_bytes((Path(world_coco.images) / image["file_name"]).read_bytes())
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps(data))
    args = ["--captions", captions, "--images", images, "--out", tmp_path / "m.jsonl"]
    result = CliRunner().invoke(cli, ["generate", "--no-progress", *map(str, args)])
    assert (
        result.exit_code != 0
        and "missing image file" in result.output
        and data["images"][0]["file_name"] in result.output
    )
    result = CliRunner().invoke(cli, ["generate", "--no-progress", "--skip-bad-images", *map(str, args)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[-1])["skipped_bad_images"] == 1


@pytest.mark.e2e
def test_killed_run_resumes_without_duplicates_or_losses(world_coco, tmp_path):
    # A bigger input (the world's captions repeated) in tiny fsynced chunks, so the kill lands mid-run.
    data = json.loads(Path(world_coco.captions).read_text())
    base = data["annotations"]
    data["annotations"] = [dict(a, id=k * len(base) + a["id"]) for k in range(2) for a in base]
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps(data))
    common = ["--captions", str(captions), "--instances", str(world_coco.instances), "--images",
              str(world_coco.images), "--chunk-size", "8", "--seed", "3", "--no-progress"]  # fmt: skip
    reference = tmp_path / "reference.jsonl"
    assert _generate(*common[:-1], "--out", str(reference)).exit_code == 0

    out = tmp_path / "resumed.jsonl"
    progress = out.with_name(out.name + ".progress.json")
    done = stop_generate_midway(common, out, after_chunks=3, stop=signal.SIGKILL)
    n_chunks = -(-len(data["annotations"]) // 8)
    assert 0 < done < n_chunks and not out.exists()

    finished = _generate(*common[:-1], "--out", str(out))  # the restart, in-process (saves an interpreter start)
    assert finished.exit_code == 0, finished.output
    summary = json.loads(finished.output.splitlines()[-1])
    assert summary["resumed_from_chunk"] >= done
    assert out.read_bytes() == reference.read_bytes()
    assert not progress.exists() and not out.with_name(out.name + ".partial").exists()


def test_caption_table_without_instances_and_negationclip_output(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / name)
    table = tmp_path / "captions.jsonl"
    table.write_text('{"image": "a.png", "caption": "A dog with a frisbee on the grass."}\n'
                     '{"image": "b.png", "caption": "A cat sitting next to a laptop."}\n')  # fmt: skip
    common = ["--captions", str(table), "--images", str(tmp_path / "images"), "--seed", "1"]
    result = _generate(*common, "--kinds", "absence,presence", "--out", str(tmp_path / "n.jsonl"))
    assert result.exit_code == 0, result.output
    records = read_negation_records(tmp_path / "n.jsonl")
    presence = {r.image: r for r in records if r.kind == "presence"}
    assert presence["a.png"].objects[0] in {"dog", "frisbee"} and presence["b.png"].objects[0] in {"cat", "laptop"}
    assert {r.verifier for r in records if r.kind == "absence"} == {None}  # no verifier without annotations
    for record in records:
        assert len(mention_pattern(record.objects[0]).findall(record.negated_caption)) == 1
    # NegationCLIP's format as output: the absence records, read back identically.
    result = _generate(*common, "--out", str(tmp_path / "negationclip.json"))
    assert result.exit_code == 0, result.output
    back = read_negation_records(tmp_path / "negationclip.json")
    assert [(r.image, r.negated_caption) for r in back] == [
        (r.image, r.negated_caption) for r in records if r.kind == "absence"
    ]


def test_option_errors_are_one_line_and_name_the_plugin(world_coco, tmp_path):
    base = ["generate", "--no-progress", "--captions", str(world_coco.captions), "--images", str(world_coco.images),
            "--out", str(tmp_path / "x.jsonl")]  # fmt: skip
    json_out = base[:-1] + [str(tmp_path / "x.json")]
    cases = [
        (["--negator", "nope"], "no negator named 'nope'; registered negators: template, llm"),
        (["--verifier", "detector", "--verifier-option", "bogus=1"], "verifier 'detector' has no option(s) bogus"),
        (["--verifier-option", "threshold=1"], "--verifier-option given but no verifier is used"),
        (
            ["--negator-option", "colour=red"],
            "negator 'template' has no option(s) colour; its options: mode, negation_only_share, partial_share, context_length",
        ),
        (["--negator-option", "x"], "expected KEY=VALUE, got 'x'"),
        (["--kinds", "absence,maybe"], "kinds must be among absence, presence"),
        (["--shard", "3/2"], "Invalid value for '--shard': expected I/N with 0 <= I < N (e.g. 0/4) or auto, got '3/2'"),
        (["--shard", "x"], "Invalid value for '--shard': expected I/N with 0 <= I < N (e.g. 0/4) or auto, got 'x'"),
        (["--shard", "auto"], "Invalid value for '--shard': 'auto' needs RANK and WORLD_SIZE"),
        (["--shard", "0/2"], "a shard writes JSONL records: give --out NAME.jsonl"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(cli, (json_out if extra == ["--shard", "0/2"] else base) + extra)
        assert result.exit_code != 0 and message in result.output, (extra, result.output)
        assert "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


def test_shards_merged_equal_the_unsharded_output_byte_for_byte(world_coco, tmp_path):
    common = ["--captions", world_coco.captions, "--instances", world_coco.instances, "--images", world_coco.images,
              "--chunk-size", "8", "--seed", "5"]  # fmt: skip
    assert _generate(*common, "--out", tmp_path / "all.jsonl").exit_code == 0
    assert _generate(*common, "--out", tmp_path / "all.json").exit_code == 0
    parts = [tmp_path / f"part{i}.jsonl" for i in range(2)]
    result = _generate(*common, "--shard", "0/2", "--out", parts[0])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[-1])["shard"] == "0/2"
    # As one process of `accelerate launch` / torchrun would run it.
    auto = ["generate", "--no-progress", *map(str, common), "--shard", "auto"]
    result = CliRunner().invoke(
        cli, [*auto, "--out", str(tmp_path / "part.jsonl")], env={"RANK": "1", "WORLD_SIZE": "2"}
    )
    assert result.exit_code != 0 and "Invalid value for '--out': with --shard auto, put {shard} in" in result.output
    result = CliRunner().invoke(
        cli, [*auto, "--out", str(tmp_path / "part{shard}.jsonl")], env={"RANK": "1", "WORLD_SIZE": "2"}
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[-1])["shard"] == "1/2"
    assert 0 < parts[0].stat().st_size < (tmp_path / "all.jsonl").stat().st_size
    merge = ["generate", "merge", *map(str, reversed(parts))]  # any order
    result = CliRunner().invoke(cli, [*merge, "--out", str(tmp_path / "merged.jsonl")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "merged.jsonl").read_bytes() == (tmp_path / "all.jsonl").read_bytes()
    summary = json.loads(result.output.splitlines()[-1])
    whole = read_negation_records(tmp_path / "all.jsonl")
    assert summary["absence"] + summary["presence"] == len(whole) and summary["shards"] == 2
    assert CliRunner().invoke(cli, [*merge, "--out", str(tmp_path / "merged.json")]).exit_code == 0
    assert (tmp_path / "merged.json").read_bytes() == (tmp_path / "all.json").read_bytes()

    # Missing, repeated, truncated or foreign shards are one-line errors naming the problem.
    other = tmp_path / "other.jsonl"
    assert _generate(*common[:-1], "6", "--shard", "1/2", "--out", other).exit_code == 0
    cases = [
        ([parts[0]], "cannot merge 1 file(s) into 2 shards: missing shard(s) [1]"),
        ([parts[0], parts[0]], "shard(s) [0] given more than once"),
        ([parts[0], other], "shard of a different run than"),
        ([parts[0], tmp_path / "all.jsonl"], "all.jsonl: not a finished shard output"),
    ]
    for shards, message in cases:
        result = CliRunner().invoke(cli, ["generate", "merge", *map(str, shards), "--out", str(tmp_path / "x.jsonl")])
        assert result.exit_code != 0 and message in result.output, (shards, result.output)
        assert "Traceback" not in result.output and not (tmp_path / "x.jsonl").exists()
    parts[1].write_bytes(parts[1].read_bytes()[:-10])
    result = CliRunner().invoke(cli, [*merge, "--out", str(tmp_path / "x.jsonl")])
    assert result.exit_code != 0 and "but its shard description says" in result.output
