"""Micro-batches from a torch DataLoader: workers draw each batch key (:mod:`negation_plugins.losses.batch`), look
their texts' tokens up, negate on the fly and decode images, so the training thread only runs the model.

Item ``g`` of :class:`MicroBatches` is micro-batch ``g`` of this process, a pure function of (seed, g, rank) as
:class:`trainers.batches.BatchPlan` defines it; the sampler is ``range(first, last)``, so a resumed run asks for
exactly the micro-batches the interrupted one had left, whatever the number of workers. The examples come from any
indexable source (``pool[i]``), read only when a batch needs them.

Keys made after the images (TNG's on-the-fly negations) need image features: with the feature table they are made
in the worker, without it in the training thread once the vision tower has run; both call
:meth:`OnTheFly.make` with the seed of :func:`on_the_fly_seed`, so the texts are the same either way.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from negation_plugins.losses.batch import CHOICES, IMAGE, BatchKey, Draw, Example, Pool

from .batches import BatchPlan, EvalPlan, batch_rng


class TokenCache:
    """Token ids of texts, each tokenized once: BPE in Python costs about as much as a tiny text tower's forward
    pass. :meth:`fill` tokenizes every text the records hold before training (split across processes), so the
    DataLoader workers only look rows up; texts made during training (on-the-fly negations) are tokenized where
    they are made and kept by that process."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.context_length = int(getattr(tokenizer, "context_length", 77))
        self.index: dict[str, int] = {}
        self.table = torch.zeros(0, self.context_length, dtype=torch.int32)
        self.extra: dict[str, torch.Tensor] = {}

    def fill(self, texts, accelerator) -> int:
        """Tokenize the distinct ``texts`` once for all processes: each process takes every ``world``-th text and
        the rows are gathered; returns how many texts were tokenized."""
        texts = [t for t in dict.fromkeys(texts) if t not in self.index]
        world, rank = accelerator.num_processes, accelerator.process_index
        mine = texts[rank::world]
        rows = self.tokenizer(mine).to(torch.int32) if mine else torch.zeros(0, self.context_length, dtype=torch.int32)
        if world > 1:  # rows of rank r sit at r * longest + j in the gathered tensor, for texts[r + j * world]
            longest = -(-len(texts) // world)
            padded = torch.zeros(longest, self.context_length, dtype=torch.int32)
            padded[: len(mine)] = rows
            gathered = accelerator.gather(padded.to(accelerator.device)).cpu()
            order = [r * longest + j for j in range(longest) for r in range(world) if r + j * world < len(texts)]
            rows = gathered[torch.tensor(order, dtype=torch.long)]
        first = len(self.index)
        self.index.update((text, first + i) for i, text in enumerate(texts))
        self.table = torch.cat([self.table, rows])
        return len(texts)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """int32 token ids (the text tower's embedding takes them; half the memory of int64)."""
        new = list(dict.fromkeys(t for t in texts if t not in self.index and t not in self.extra))
        if new:
            self.extra.update(zip(new, self.tokenizer(new).to(torch.int32)))
        if not len(self.table):
            return torch.stack([self.extra[t] for t in texts])
        # index_select: advanced indexing costs ~8x more on a busy CPU; texts made in training are put in after
        rows = self.table.index_select(0, torch.tensor([self.index.get(t, 0) for t in texts]))
        for i, text in enumerate(texts):
            if text not in self.index:
                rows[i] = self.extra[text]
        return rows


def record_texts(examples: Sequence[Example]) -> list[str]:
    """Every text a batch of these examples can draw from the records (MCQ options and fillers included)."""
    return [t for e in examples for t in (e.caption, *e.absence, *e.presence)]


def on_the_fly_seed(seed: int, split: str, micro_batch: int, rank: int) -> int:
    """The one seed rule of on-the-fly negation: validation draws from ``seed + 10_000``; ``rank`` is 0 when the
    global batch of all processes is negated as one (``--gather-negatives``)."""
    return (seed + (10_000 if split != "train" else 0)) * 1_000_003 + micro_batch * 101 + rank


def draw_keys(keys: list[BatchKey], draw: Draw) -> dict:
    """The values of every key made before the images: texts per key (CHOICES flattened, their answers as labels),
    image paths per key, and the layout of the texts (key, options per example; 0: one text per example)."""
    texts, layout, labels, images = {}, [], {}, {}
    for key in keys:
        if key.after_images:
            continue
        values = key.build(draw)
        if key.kind == IMAGE:
            images[key.name] = values
        elif key.kind == CHOICES:
            texts[key.name] = [text for options, _ in values for text in options]
            layout.append((key.name, len(values[0][0])))
            labels[key.name + "_answer"] = [answer for _, answer in values]
        else:
            texts[key.name] = values
            layout.append((key.name, 0))
    return {"texts": texts, "layout": layout, "labels": labels, "images": images}


@dataclass
class OnTheFly:
    """What keys made after the images need of one micro-batch: its examples (every process's, in rank order, when
    the global batch is negated as one), the seed, and which of the made rows are this process's."""

    examples: list[Example]
    seed: int
    own: slice
    context_length: int
    settings: object = None

    def make(self, keys: list[BatchKey], image_features: torch.Tensor) -> dict[str, list[str]]:
        draw = Draw(
            self.examples,
            random.Random(self.seed),
            Pool(self.examples),
            self.settings,
            self.seed,
            self.context_length,
            image_features,
        )
        return {key.name: key.build(draw)[self.own] for key in keys}


class HostImages:
    """Image paths -> what the training thread embeds: rows of the feature table (cached mode) or decoded and
    preprocessed pixels (``--no-cache-image-features``)."""

    def __init__(self, rows: dict[str, int], table: torch.Tensor | None, preprocess, root: Path):
        self.rows, self.table, self.preprocess, self.root = rows, table, preprocess, root

    def __call__(self, paths: list[str]) -> torch.Tensor:
        if self.table is not None:
            return torch.tensor([self.rows[p] for p in paths])
        from negation_plugins.images import load_rgb

        return torch.stack([self.preprocess(load_rgb(self.root / path)) for path in paths])

    def features(self, paths: list[str]) -> torch.Tensor:
        return self.table[torch.tensor([self.rows[p] for p in paths])].float()


class MicroBatches(Dataset):
    """Host-side micro-batches of one process: token ids and layout of the texts, image rows or pixels, labels."""

    def __init__(
        self,
        pool: Sequence[Example],
        plan: BatchPlan | EvalPlan,
        rank: int,
        keys: list[BatchKey],
        tokens: TokenCache,
        images: HostImages,
        split: str,
        settings,
        gather: bool = False,
    ):
        self.pool, self.plan, self.rank, self.keys = Pool(pool), plan, rank, keys
        self.tokens, self.images, self.split, self.settings, self.gather = tokens, images, split, settings, gather
        self.late = [key for key in keys if key.after_images]

    def chunk(self, micro_batch: int, rank: int) -> list[Example]:
        return [self.pool[i] for i in self.plan.indices(micro_batch, rank)]

    def __getitem__(self, micro_batch: int) -> dict:
        chunk = self.chunk(micro_batch, self.rank)
        if not chunk:  # past the end of a validation split
            return {"n": 0}
        rng = batch_rng(self.settings.seed, micro_batch, self.rank, self.split)
        draw = Draw(chunk, rng, self.pool, self.settings, context_length=self.tokens.context_length)
        item = {"n": len(chunk), **draw_keys(self.keys, draw)}
        if self.late:
            on_the_fly = self.on_the_fly(micro_batch, chunk)
            if self.images.table is None:  # no features here: the training thread makes them after the images
                item["on_the_fly"] = on_the_fly
            else:
                made = on_the_fly.make(self.late, self.images.features([e.image for e in on_the_fly.examples]))
                item["texts"].update(made)
                item["layout"] += [(name, 0) for name in made]
        item["tokens"] = self.tokens([t for values in item.pop("texts").values() for t in values])
        item["images"] = {name: self.images(paths) for name, paths in item["images"].items()}
        item["labels"] = {name: torch.tensor(values) for name, values in item["labels"].items()}
        return item

    def on_the_fly(self, micro_batch: int, chunk: list[Example]) -> OnTheFly:
        """With ``gather``, every process's examples of this micro-batch (the plan lets any process rebuild them)."""
        if not self.gather:
            seed = on_the_fly_seed(self.settings.seed, self.split, micro_batch, self.rank)
            return OnTheFly(chunk, seed, slice(None), self.tokens.context_length, self.settings)
        group = [e for rank in range(self.plan.world_size) for e in self.chunk(micro_batch, rank)]
        own = slice(self.rank * len(chunk), (self.rank + 1) * len(chunk))
        seed = on_the_fly_seed(self.settings.seed, self.split, micro_batch, 0)
        return OnTheFly(group, seed, own, self.tokens.context_length, self.settings)


def batch_loader(dataset, first: int, last: int, workers: int) -> DataLoader:
    """Micro-batches ``first .. last-1`` in order; each item is already a batch (``batch_size=None``). Workers
    persist across passes (validation iterates its loader once per evaluation). A streamed dataset
    (:class:`negation_plugins.data.stream.StreamedBatches`) is cut to the window itself."""
    streamed = hasattr(dataset, "window")
    return DataLoader(
        dataset.window(first, last) if streamed else dataset,
        batch_size=None,
        sampler=None if streamed else range(first, last),
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers else None,
        persistent_workers=workers > 0,
    )
