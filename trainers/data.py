"""Micro-batches from a torch DataLoader: workers draw texts, look their tokens up (tokenized once before training),
negate on the fly and decode images, so the training thread only runs the model.

Item ``g`` of :class:`MicroBatches` is micro-batch ``g`` of this process, a pure function of (seed, g, rank) as
:class:`trainers.batches.BatchPlan` defines it; the sampler is ``range(first, last)``, so a resumed run asks for
exactly the micro-batches the interrupted one had left, whatever the number of workers.

Images come as rows of the feature table (cached mode) or as preprocessed pixels decoded in the workers
(``--no-cache-image-features``). TNG's on-the-fly negation needs image features for hard-object mining: with the
table it runs in the worker (over all processes' examples of the micro-batch with ``--gather-negatives``, which
the plan lets every worker rebuild without talking to the others); without it, in the training thread.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from .batches import BatchPlan, Example, batch_rng, build_texts, distractor_images

ON_THE_FLY_KEYS = ("hybrid", "full")


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


class EvalPlan:
    """Validation: fixed consecutive chunks (the same every time); chunk ``g * world_size + rank`` on ``rank``."""

    def __init__(self, n_examples: int, batch_size: int, world_size: int):
        self.n, self.batch_size, self.world_size = n_examples, batch_size, world_size

    def chunks(self) -> int:
        return -(-self.n // self.batch_size)

    def indices(self, micro_batch: int, rank: int) -> list[int]:
        start = (micro_batch * self.world_size + rank) * self.batch_size
        return list(range(min(start, self.n), min(start + self.batch_size, self.n)))


def record_texts(examples: list[Example]) -> list[str]:
    """Every text a batch of these examples can draw from the records (MCQ options and fillers included)."""
    return [t for e in examples for t in (e.caption, *e.absence, *e.presence)]


def negate_on_the_fly(captions, image_embeds, objects, seed: int, context_length: int) -> dict[str, list[str]]:
    """TNG-CLIP's hybrid and full negations of a batch (hard objects mined by image similarity)."""
    from negation_plugins.data.onthefly import OnTheFlyNegation

    generated = OnTheFlyNegation(seed=seed, context_length=context_length)(
        captions, image_embeds=image_embeds, objects=objects if any(objects) else None
    )
    return {key: generated[key] for key in ON_THE_FLY_KEYS}


def on_the_fly_seed(seed: int, micro_batch: int, rank: int) -> int:
    return seed * 1_000_003 + micro_batch * 101 + rank


class MicroBatches(Dataset):
    """Host-side micro-batches of one process: token ids, image rows or pixels, MCQ answers."""

    def __init__(
        self,
        examples: list[Example],
        plan: BatchPlan | EvalPlan,
        rank: int,
        requires: tuple[str, ...],
        tokens: TokenCache,
        seed: int,
        split: str,
        image_rows: dict[str, int],
        table: torch.Tensor | None,
        preprocess,
        images_root,
        absent_index: dict[str, list[int]],
        gather: bool = False,
        mcq_affirmation_share: float = 0.0,
        mcq_scope_swap: bool = False,
    ):
        self.examples, self.plan, self.rank, self.requires = examples, plan, rank, requires
        self.tokens = tokens
        self.seed, self.split, self.image_rows, self.table = seed, split, image_rows, table
        self.preprocess, self.images_root, self.absent_index, self.gather = (
            preprocess,
            images_root,
            absent_index,
            gather,
        )
        self.on_the_fly = any(key in requires for key in ON_THE_FLY_KEYS)
        self.mcq_affirmation_share = mcq_affirmation_share
        self.mcq_scope_swap = mcq_scope_swap

    def chunk(self, micro_batch: int, rank: int) -> list[Example]:
        return [self.examples[i] for i in self.plan.indices(micro_batch, rank)]

    def __getitem__(self, micro_batch: int) -> dict:
        chunk = self.chunk(micro_batch, self.rank)
        if not chunk:  # past the end of a validation split
            return {"n": 0}
        rng = batch_rng(self.seed, micro_batch, self.rank, self.split)
        texts, answers = build_texts(
            chunk, self.requires, rng, self.examples, self.mcq_affirmation_share, self.mcq_scope_swap
        )
        images = [e.image for e in chunk]
        out: dict = {"n": len(chunk)}
        if "distractor_image" in self.requires:
            out["distractors"] = self._images(distractor_images(chunk, rng, self.absent_index, self.examples))
        if self.on_the_fly and self.table is not None:
            texts.update(self._negate(chunk, micro_batch))
        elif self.on_the_fly:  # no features here: the training thread negates after embedding the images
            out["captions"] = texts["caption"]
            out["objects"] = [e.present_objects for e in chunk]
        out["images"] = self._images(images)
        out["layout"] = [(key, len(values)) for key, values in texts.items()]
        out["tokens"] = self.tokens([t for values in texts.values() for t in values])
        if answers is not None:
            out["mcq_answer"] = torch.tensor(answers)
        return out

    def _images(self, paths: list[str]) -> torch.Tensor:
        """Rows of the feature table, or decoded and preprocessed pixels."""
        if self.table is not None:
            return torch.tensor([self.image_rows[p] for p in paths])
        from negation_plugins.images import load_rgb

        return torch.stack([self.preprocess(load_rgb(self.images_root / path)) for path in paths])

    def _negate(self, chunk: list[Example], micro_batch: int) -> dict[str, list[str]]:
        world = self.plan.world_size if self.gather else 1
        ranks = range(world) if self.gather else [self.rank]
        group = [e for r in ranks for e in (self.chunk(micro_batch, r) if self.gather else chunk)]
        embeds = self.table[torch.tensor([self.image_rows[e.image] for e in group])].float()
        seed = on_the_fly_seed(
            self.seed + (10_000 if self.split != "train" else 0), micro_batch, 0 if self.gather else self.rank
        )
        texts = negate_on_the_fly(
            [e.caption for e in group], embeds, [e.present_objects for e in group], seed, self.tokens.context_length
        )
        own = slice(self.rank * len(chunk), (self.rank + 1) * len(chunk)) if self.gather else slice(None)
        return {key: values[own] for key, values in texts.items()}


def batch_loader(dataset: MicroBatches, first: int, last: int, workers: int) -> DataLoader:
    """Micro-batches ``first .. last-1`` in order; each item is already a batch (``batch_size=None``). Workers
    persist across passes (validation iterates its loader once per evaluation)."""
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=range(first, last),
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers else None,
        persistent_workers=workers > 0,
    )
