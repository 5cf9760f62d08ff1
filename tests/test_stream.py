"""Streamed rows: split across processes and DataLoader workers, the same batches whatever the workers, resumable."""

from __future__ import annotations

import json
import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from negation_plugins.data.stream import RowStream, StreamedBatches
from tests.test_formats import write_img2dataset_shards, write_negcap


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEGATION_PLUGINS_CACHE", str(tmp_path / "cache"))


def _keys(batch) -> dict:
    return {"epoch": batch.epoch, "index": batch.index, "rows": [r.image for r in batch.rows]}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_img2dataset_shards(tmp_path_factory.mktemp("stream") / "shards", n_shards=4, per_shard=8)


def test_ranks_read_disjoint_shards_and_together_every_sample_once(shards):
    streams = [RowStream(shards, batch_size=4, seed=3, rank=r, world_size=2, shuffle_buffer=5) for r in range(2)]
    assert streams[0].steps_per_epoch() == 4
    for epoch in range(2):
        seen = [[row.image for b in s.batches(epoch) for row in b.rows] for s in streams]
        shard_sets = [{image.split("#")[0] for image in rank} for rank in seen]
        assert len(shard_sets[0]) == len(shard_sets[1]) == 2 and not shard_sets[0] & shard_sets[1]
        assert sorted(seen[0] + seen[1]) == sorted(r.image for r in RowStream(shards, batch_size=4).rows(epoch))
    first_epochs = [[row.image for b in streams[0].batches(e) for row in b.rows] for e in range(2)]
    assert first_epochs[0] != first_epochs[1]  # a new order every epoch


def test_one_file_for_more_ranks_splits_its_rows(tmp_path):
    path = write_negcap(tmp_path / "negcap.csv", [(f"{i}.jpg", f"a cat {i}", [f"no dog {i}"]) for i in range(10)])
    streams = [RowStream(str(path), batch_size=2, rank=r, world_size=3) for r in range(3)]
    seen = [[row.image for b in s.batches(0) for row in b.rows] for s in streams]
    assert all(len(rank) == 2 * 1 for rank in seen)  # 10 // 3 = 3 rows each -> one batch of 2
    assert len({image for rank in seen for image in rank}) == 6


def test_joined_sources_mix_over_the_epoch(tmp_path):
    from tests.test_formats import write_negmcq

    negcap = write_negcap(tmp_path / "negcap.csv", [(f"c{i}.jpg", f"a cat {i}", [f"no dog {i}"]) for i in range(40)])
    negmcq = write_negmcq(
        tmp_path / "negmcq.csv", [(f"m{i}.jpg", ["a", "b", "c", "d"], 1, "negative") for i in range(40)]
    )
    stream = RowStream(f"{negcap}::{negmcq}", batch_size=8, shuffle_buffer=1)
    order = [row.image[0] for row in stream.rows(0)]
    assert sorted(order) == ["c"] * 40 + ["m"] * 40
    assert 10 < order[:40].count("m") < 30  # both sources in the first half, not one file after the other


def test_shuffle_buffer_is_a_seeded_permutation(shards):
    stream = RowStream(shards, batch_size=4, seed=1, shuffle_buffer=6)
    once, again = ([r.image for r in stream.shuffled(0)] for _ in range(2))
    assert (
        once == again
        and sorted(once) == sorted(r.image for r in stream.rows(0))
        and once != list(r.image for r in stream.rows(0))
    )


def test_workers_make_the_same_batches_and_a_resume_continues_them(shards):
    stream = RowStream(shards, batch_size=4, seed=5, pool_size=6)
    steps = stream.steps_per_epoch()
    total = 2 * steps + 3  # into a third epoch

    def run(first, workers):
        loader = DataLoader(StreamedBatches(stream, _keys, first, total), batch_size=None, num_workers=workers)
        return list(loader)

    uninterrupted = run(0, 0)
    assert [(b["epoch"], b["index"]) for b in uninterrupted] == [divmod(g, steps) for g in range(total)]
    assert run(0, 2) == uninterrupted
    assert run(steps + 3, 2) == uninterrupted[steps + 3 :]
    pools = [b.pool for b in stream.batches(0)]
    assert len(pools[0]) == 0 and len(pools[2]) == 6  # the last pool_size rows before the batch


def _gloo_rank(rank, world, port, shards, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        stream = RowStream(shards, batch_size=4, seed=7, rank=rank, world_size=world)
        steps = stream.steps_per_epoch()
        loader = DataLoader(StreamedBatches(stream, _keys, 0, 2 * steps), batch_size=None)
        mine = [(b["epoch"], image) for b in loader for image in b["rows"]]
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
        if rank == 0:
            out.write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_see_every_sample_once_per_epoch(shards, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "seen.json"
    mp.spawn(_gloo_rank, args=(2, port, shards, out), nprocs=2, join=True)
    seen = json.loads(out.read_text())
    everything = sorted(r.image for r in RowStream(shards, batch_size=4).rows(0))
    for epoch in range(2):
        per_rank = [[image for e, image in rank if e == epoch] for rank in seen]
        assert sorted(per_rank[0] + per_rank[1]) == everything
        assert not {i.split("#")[0] for i in per_rank[0]} & {i.split("#")[0] for i in per_rank[1]}


def test_row_counts_are_cached_per_file_version(tmp_path):
    path = write_negcap(tmp_path / "negcap.csv", [(f"{i}.jpg", f"a cat {i}", [f"no dog {i}"]) for i in range(6)])
    assert RowStream(str(path), batch_size=2).sizes == [6]
    assert len(list((tmp_path / "cache" / "row-counts").glob("*.json"))) == 1
    write_negcap(path, [(f"{i}.jpg", f"a cat {i}", [f"no dog {i}"]) for i in range(9)])
    assert RowStream(str(path), batch_size=2).sizes == [9]  # a changed file is counted again


def test_too_little_data_for_one_batch_is_an_error(tmp_path):
    path = write_negcap(tmp_path / "negcap.csv", [("a.jpg", "a cat", ["no dog"])])
    with pytest.raises(ValueError, match=r"negcap\.csv: 1 rows make no micro-batch of 4"):
        RowStream(str(path), batch_size=4)


def test_memory_holds_buffers_not_the_data(tmp_path):
    """The stream keeps only the shuffle buffer and the pool: a row read early is released once it is passed on
    (rows hold no reference cycles, so they go as soon as the last reference does)."""
    import weakref

    path = write_negcap(tmp_path / "negcap.csv", [(f"{i}.jpg", f"a cat {i}", [f"no dog {i}"]) for i in range(400)])
    stream = RowStream(str(path), batch_size=10, shuffle_buffer=8, pool_size=8)
    refs, most_alive = [], 0
    for batch in stream.batches(0):
        refs.extend(weakref.ref(row) for row in batch.rows)
        del batch
        most_alive = max(most_alive, sum(r() is not None for r in refs))
    assert len(refs) == 400 and most_alive <= 8 + 8 + 10  # pool + shuffle buffer + the batch being made
