"""Streamed training input (``--stream``, and always for webdataset shards): the trainer's batches made from rows
read lazily (:mod:`negation_plugins.data.stream`), so memory and start-up do not grow with the records.

What changes against the in-memory input (docs/scale.md states the trade-offs): records are not grouped across the
file (a row is one image + caption with the negations beside it in the same row or consecutive JSONL lines); MCQ
fillers and distractor images come from the last ``--stream-pool`` rows, not from every example; texts are tokenized
where the batch is made (the fast tokenizer when it gives the model tokenizer's ids); images are decoded in the
DataLoader workers (shard samples from their bytes) and embedded every step; there is no validation split (use
``--eval-mcq``). Micro-batch ``g`` is still a pure function of (seed, g, rank), so ``--resume`` continues exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch

from negation_plugins.data.formats import Row, decode_image, read_rows, source_units
from negation_plugins.data.stream import Batch, RowStream, StreamedBatches
from negation_plugins.losses.batch import BatchKey, Draw, Example, Pool

from .batches import batch_rng
from .data import OnTheFly, draw_keys, on_the_fly_seed

TOKENIZER_CHECK_TEXTS = 512


def streamed(config) -> bool:
    """``--stream``, shards, or joined sources (``A::B``)."""
    units = source_units(config.train, config.train_format)
    return bool(config.stream) or "::" in config.train or any(fmt == "webdataset" for _, fmt in units)


def row_example(row: Row) -> Example:
    return Example(
        image=row.image,
        caption=row.caption,
        image_id=row.image_id,
        absence=list(row.absence),
        presence=list(row.presence),
        absent_objects=list(row.absent_objects),
        present_objects=list(row.present_objects),
        image_objects=list(row.present_objects),
    )


class StreamTokens:
    """Texts -> int32 token ids, tokenized where the batch is made (no table of every text): the fast tokenizer
    when it gives ``tokenizer``'s ids on ``sample``, else ``tokenizer`` itself. ``name`` says which."""

    def __init__(self, tokenizer, sample: list[str]):
        from negation_plugins.tokenizer import FastClipTokenizer

        self.context_length = int(getattr(tokenizer, "context_length", 77))
        fast = FastClipTokenizer(self.context_length)
        same = bool(sample) and torch.equal(fast(sample), tokenizer(sample).to(torch.long))
        self.tokenize, self.name = (fast, "fast") if same else (tokenizer, "model")

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.tokenize(texts).to(torch.int32)


class StreamInput:
    """The rank's :class:`RowStream` over ``--train`` and the batch maker its DataLoader workers run."""

    def __init__(self, config, keys: list[BatchKey], rank: int, world_size: int):
        if config.gather_negatives and world_size > 1:
            raise ValueError("--gather-negatives is not available with streamed input (--stream or shards)")
        usable = [key.usable for key in keys if key.usable is not None]
        self.config, self.keys, self.rank = config, keys, rank
        self.late = [key for key in keys if key.after_images]
        self.stream = RowStream(
            config.train,
            config.train_format,
            batch_size=config.batch_size,
            seed=config.seed,
            rank=rank,
            world_size=world_size,
            shuffle_buffer=config.stream_shuffle,
            pool_size=config.stream_pool,
            keep=lambda row: all(check(row_example(row)) for check in usable),
        )

    def sample(self, n: int = TOKENIZER_CHECK_TEXTS) -> list[Example]:
        """The first ``n`` rows of the source, for the model/tokenizer checks (nothing else is read up front)."""
        examples = []
        for row in read_rows(self.config.train, self.config.train_format):
            examples.append(row_example(row))
            if len(examples) >= n:
                break
        return examples

    def dataset(self, tokens: StreamTokens, preprocess, images_root: Path) -> StreamedBatches:
        self.tokens, self.preprocess, self.images_root = tokens, preprocess, images_root
        return StreamedBatches(self.stream, self.make)

    def make(self, batch: Batch) -> dict:
        """The DataLoader item :func:`trainers.finetune.make_batch` reads, as :class:`trainers.data.MicroBatches`
        makes it; the pool is the rows read before the batch."""
        g = batch.epoch * self.stream.steps_per_epoch() + batch.index
        examples = [row_example(row) for row in batch.rows]
        pool = Pool([row_example(row) for row in batch.pool] + examples)
        rng = batch_rng(self.config.seed, g, self.rank, "train")
        draw = Draw(examples, rng, pool, self.config, context_length=self.tokens.context_length)
        item = {"n": len(examples), **draw_keys(self.keys, draw)}
        if self.late:  # no feature table here: the training thread negates after embedding the images
            seed = on_the_fly_seed(self.config.seed, "train", g, self.rank)
            item["on_the_fly"] = OnTheFly(examples, seed, slice(None), self.tokens.context_length, self.config)
        item["tokens"] = self.tokens([t for values in item.pop("texts").values() for t in values])
        rows = {row.image: row for row in (*batch.pool, *batch.rows)}
        item["images"] = {name: self.pixels(paths, rows) for name, paths in item["images"].items()}
        item["labels"] = {name: torch.tensor(values) for name, values in item["labels"].items()}
        return item

    def pixels(self, images: list[str], rows: dict[str, Row]) -> torch.Tensor:
        """Shard samples decode from their bytes, other rows from ``--images``."""
        from negation_plugins.images import load_rgb

        decoded = []
        for image in images:
            encoded = rows[image].image_bytes if image in rows else None
            decoded.append(decode_image(encoded) if encoded is not None else load_rgb(self.images_root / image))
        return torch.stack([self.preprocess(picture) for picture in decoded])
