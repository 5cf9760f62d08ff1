"""`negclip generate --shards`: negations per img2dataset shard, resumable per shard, split over processes."""

from __future__ import annotations

import json

from click.testing import CliRunner

from negation_plugins.cli import cli
from negation_plugins.data.formats import read_rows, shard_samples
from tests.test_formats import write_img2dataset_shards


def _generate(*args):
    return CliRunner().invoke(cli, ["generate", "--no-progress", *map(str, args)])


def test_generate_over_shards_writes_negated_shards_the_stream_reads(tmp_path):
    pattern = write_img2dataset_shards(tmp_path / "in", n_shards=3, per_shard=5)
    out = tmp_path / "out"
    result = _generate("--shards", pattern, "--out-dir", out, "--seed", 1)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.splitlines()[-1])
    assert (summary["shards"], summary["samples"], summary["shards_done_before"]) == (3, 15, 0)
    rows = list(read_rows(str(out / "cc12m-train-{0000..0002}.tar")))
    assert len(rows) == 15 and all(r.absence for r in rows)
    assert rows[0].image == "cc12m-train-0000.tar#000000000" and rows[0].image_bytes
    records = [json.loads(line) for line in (out / "cc12m-train-0001.tar.negations.jsonl").read_text().splitlines()]
    assert {r["image"] for r in records} == {f"cc12m-train-0001.tar#00001000{i}" for i in range(5)}
    meta = json.loads(dict(next(shard_samples(out / "cc12m-train-0000.tar"))[1])["json"])
    assert meta["width"] == 16 and meta["negations"][0]["kind"] == "absence"  # img2dataset's fields kept
    assert json.loads((out / "cc12m-train-0000_stats.json").read_text())["successes"] == 5


def test_a_rerun_resumes_at_the_unfinished_shard(tmp_path):
    pattern = write_img2dataset_shards(tmp_path / "in", n_shards=3, per_shard=4)
    out = tmp_path / "out"
    assert _generate("--shards", pattern, "--out-dir", out).exit_code == 0
    first = (out / "cc12m-train-0002.tar").read_bytes()
    (out / "cc12m-train-0002.tar").unlink()  # as if killed while writing the last shard
    result = _generate("--shards", pattern, "--out-dir", out)
    summary = json.loads(result.output.splitlines()[-1])
    assert (summary["shards_done_before"], summary["shards"]) == (2, 1)
    assert (out / "cc12m-train-0002.tar").read_bytes() == first  # the same bytes as the uninterrupted run


def test_processes_split_the_shards(tmp_path, monkeypatch):
    pattern = write_img2dataset_shards(tmp_path / "in", n_shards=3, per_shard=2)
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        result = _generate("--shards", pattern, "--out-dir", tmp_path / "out", "--shard", "auto")
        assert json.loads(result.output.splitlines()[-1])["shards"] == (2 if rank == 0 else 1)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == [f"cc12m-train-000{i}.tar" for i in range(3)]


def test_shards_and_captions_do_not_mix(tmp_path):
    result = _generate("--shards", "x-{0..1}.tar", "--out", tmp_path / "o.jsonl", "--out-dir", tmp_path)
    assert result.exit_code != 0 and "--shards goes with --out-dir" in result.output
    result = _generate("--out", tmp_path / "o.jsonl")
    assert result.exit_code != 0 and "missing option(s) --captions, --images" in result.output
