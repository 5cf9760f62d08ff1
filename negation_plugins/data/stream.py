"""Training rows streamed from files too large to hold: memory bounded by buffer sizes, not by the data.

Which rows rank ``r`` of ``world`` reads in epoch ``e`` is a pure function of (seed, e, r):

* **units** (the shards of a brace pattern, or the one file) are put in a seeded order per epoch; with at least as
  many units as ranks, rank ``r`` reads units ``order[r::world]`` (disjoint shards, as ``wds.split_by_node``);
  with fewer, every rank reads all of them and keeps every ``world``-th row (disjoint rows);
* the rank's rows go through a **shuffle buffer** of ``shuffle_buffer`` rows (seeded per epoch and rank);
* consecutive ``batch_size`` rows form micro-batch ``g``; each batch also sees a **pool** of the last
  ``pool_size`` rows before it (MCQ fillers and distractor images come from there, not from the whole data).

An epoch has the same number of micro-batches on every rank and epoch (:meth:`RowStream.steps_per_epoch`, from the
units' sizes counted once; rows a rank has beyond them that epoch are left out, as open_clip's fixed-size epochs
do; equal shards, as img2dataset writes, lose at most the last partial batch). DataLoader worker ``w`` of ``n`` yields micro-batches ``first + w``, ``first + w + n``, ...: it
reads the rank's whole stream (parsing only; images are decoded and texts tokenized only for its own batches), so
batch ``g`` is the same whatever the number of workers, and resuming at batch ``first`` replays the stream up to it
without decoding anything (cost: reading that many rows once).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch.utils.data

from ..atomic import atomic_write_text
from .formats import Row, Skips, count_rows, read_unit, source_units


def cache_root() -> Path:
    return Path(os.environ.get("NEGATION_PLUGINS_CACHE", Path.home() / ".cache" / "negation-plugins"))


def cached_count(unit: str, fmt: str) -> int:
    """Rows in ``unit``, counted once per file version (path, size, mtime) and kept in the cache folder: a start
    or resume after the first does not read the data to size its epochs."""
    stat = Path(unit).stat()
    key = hashlib.sha1(f"{Path(unit).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{fmt}".encode()).hexdigest()
    path = cache_root() / "row-counts" / f"{key}.json"
    try:
        return int(json.loads(path.read_text())["rows"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    rows = count_rows(unit, fmt)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"unit": unit, "rows": rows}) + "\n")
    except OSError:  # a read-only cache only costs the count next time
        pass
    return rows


OPEN_UNITS = 8  # units (shards, joined files) a rank reads at once, interleaved


@dataclass(frozen=True)
class Batch:
    """Micro-batch ``index`` of ``epoch`` on this rank: its rows and the pool of rows read before them."""

    epoch: int
    index: int
    rows: list[Row]
    pool: list[Row]


class RowStream:
    """Rows of one source for one rank (see the module docstring); iterate :meth:`batches`."""

    def __init__(
        self,
        source: str,
        fmt: str | None = None,
        *,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 4096,
        pool_size: int = 1024,
        skip_bad: bool = False,
        sizes: list[int] | None = None,
        keep: Callable[[Row], bool] | None = None,
    ):
        self.source = source
        self.units = source_units(source, fmt)  # (file, format) pairs
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.shuffle_buffer, self.pool_size, self.skip_bad = shuffle_buffer, pool_size, skip_bad
        self.sizes = sizes if sizes is not None else [cached_count(u, f) for u, f in self.units]
        self.skips = Skips(skip_bad)
        self.keep = keep  # rows it refuses are passed over (an epoch then starts its rows again to fill its steps)
        if self.steps_per_epoch() == 0:
            raise ValueError(
                f"{source}: {sum(self.sizes)} rows make no micro-batch of {batch_size} on each of {world_size} "
                "process(es); use a smaller batch size or more data"
            )

    # ---------------------------------------------------------------------------------------------- who reads what

    def unit_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.units)))
        random.Random(f"{self.seed}-units-{epoch}").shuffle(order)
        return order

    def by_unit(self) -> bool:
        return len(self.units) >= self.world_size

    def rank_units(self, epoch: int, rank: int) -> list[int]:
        order = self.unit_order(epoch)
        return order[rank :: self.world_size] if self.by_unit() else order

    def steps_per_epoch(self) -> int:
        """Micro-batches per rank and epoch, the same on every rank and epoch: with units split across ranks, the
        rows of the ``units // world`` smallest units (every rank gets at least that many units)."""
        if self.by_unit():
            fewest = sorted(self.sizes)[: len(self.units) // self.world_size]
            return sum(fewest) // self.batch_size
        return sum(self.sizes) // self.world_size // self.batch_size

    # -------------------------------------------------------------------------------------------------- reading

    def rows(self, epoch: int) -> Iterator[Row]:
        """This rank's rows of ``epoch`` in the order batches take them (before the shuffle buffer): up to
        :data:`OPEN_UNITS` of its units read at once, each next row drawn from one of them with a chance in
        proportion to the rows it has left, so joined sources (``negcap.csv::negmcq.csv``) and shards mix over the
        whole epoch. With fewer units than ranks every rank follows the same draw and keeps its share of rows."""
        queue = list(self.rank_units(epoch, self.rank))
        rng = random.Random(f"{self.seed}-interleave-{epoch}-{self.rank if self.by_unit() else 'all'}")
        open_units: list[list] = []  # [rows left by the count, iterator]
        running = 0
        while queue or open_units:
            while queue and len(open_units) < OPEN_UNITS:
                u = queue.pop(0)
                path, fmt = self.units[u]
                open_units.append([max(self.sizes[u], 1), read_unit(path, fmt, self.skips)])
            pick = rng.choices(range(len(open_units)), weights=[left for left, _ in open_units])[0]
            row = next(open_units[pick][1], None)
            if row is None:
                open_units.pop(pick)
                continue
            open_units[pick][0] = max(open_units[pick][0] - 1, 1)
            mine = self.by_unit() or running % self.world_size == self.rank
            running += 1
            if mine and (self.keep is None or self.keep(row)):
                yield row

    def shuffled(self, epoch: int) -> Iterator[Row]:
        """:meth:`rows` through a bounded shuffle buffer: each row swaps into a random slot of the full buffer."""
        rng = random.Random(f"{self.seed}-shuffle-{epoch}-{self.rank}")
        buffer: list[Row] = []
        for row in self.rows(epoch):
            if len(buffer) < self.shuffle_buffer:
                buffer.append(row)
                continue
            slot = rng.randrange(len(buffer))
            buffer[slot], row = row, buffer[slot]
            yield row
        rng.shuffle(buffer)
        yield from buffer

    def _cycled(self, epoch: int) -> Iterator[Row]:
        """The epoch's rows, started again should they run out (rows skipped as bad, or a file changed since it was
        counted), so every rank still makes the epoch's steps."""
        while True:
            empty = True
            for row in self.shuffled(epoch):
                empty = False
                yield row
            if empty:
                raise ValueError(f"{self.source}: rank {self.rank} found no rows to read in epoch {epoch}")

    def batches(self, epoch: int, wanted: Callable[[int], bool] = bool, last: int | None = None) -> Iterator[Batch]:
        """The micro-batches of ``epoch`` whose index is ``wanted`` (a DataLoader worker's share; default all), up
        to index ``last``; the rows of the others are read and passed over."""
        steps = self.steps_per_epoch() if last is None else last + 1
        pool: deque[Row] = deque(maxlen=self.pool_size)
        rows = self._cycled(epoch)
        for index in range(steps):
            chunk = [row for _, row in zip(range(self.batch_size), rows)]
            if wanted is bool or wanted(index):
                yield Batch(epoch, index, chunk, list(pool))
            pool.extend(chunk)


def worker_share() -> tuple[int, int]:
    """``(worker id, number of workers)`` of the current DataLoader worker; (0, 1) outside one."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class StreamedBatches(torch.utils.data.IterableDataset):
    """Made batches ``make(batch)`` for global micro-batches ``first .. last-1``, continuing into the next epochs
    (global micro-batch ``g`` is batch ``g % steps`` of epoch ``g // steps``). Use with ``batch_size=None``: the
    DataLoader takes items from its workers in turn, so worker ``w`` makes those with ``(g - first) % n == w``."""

    def __init__(self, stream: RowStream, make: Callable[[Batch], dict], first: int = 0, last: int = 0):
        self.stream, self.make, self.first, self.last = stream, make, first, last

    def window(self, first: int, last: int) -> StreamedBatches:
        """The same batches, global micro-batches ``first .. last-1``."""
        return StreamedBatches(self.stream, self.make, first, last)

    def __iter__(self):
        worker, workers = worker_share()
        steps = self.stream.steps_per_epoch()
        for epoch in range(self.first // steps, -(-self.last // steps)):
            base = epoch * steps

            def mine(index: int, base=base) -> bool:
                return self.first <= base + index < self.last and (base + index - self.first) % workers == worker

            last_index = min(self.last - base, steps) - 1
            for batch in self.stream.batches(epoch, mine, last_index):
                yield self.make(batch)
