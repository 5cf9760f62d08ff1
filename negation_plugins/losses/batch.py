"""The batch contract: each batch key says what it holds and how a micro-batch's examples make it.

An objective names the keys its loss reads (``requires``) and declares the keys it introduces (``batch_keys``) next to
its loss. The trainer builds exactly the keys the chosen objectives require, from these declarations alone: a new
objective that needs a new key is one file (its loss plus a :class:`BatchKey`), with no edit to the trainer.

Kinds (what the trainer does with a key's values, one value per example):

- ``TEXT``: a string; embedded by the text tower -> (N, D).
- ``CHOICES``: ``(options, answer)``; the K options are embedded -> (N, K, D), and ``<name>_answer`` -> (N,) long.
- ``IMAGE``: an image path (relative to ``--images``); embedded by the frozen vision tower -> (N, D).

Keys made ``after_images`` (TNG's on-the-fly negations) read the micro-batch's image features (``draw.image_features``):
the trainer builds them wherever those features first exist, with the same draw and seed either way.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

TEXT, CHOICES, IMAGE = "text", "choices", "image"
MODEL_KEYS = ("logit_scale",)  # made by the model, not from examples (the exp()'d temperature, a scalar)
# The micro-batch's random generator is drawn from in this order (then plugins' keys in the objectives' order),
# whichever objectives are combined: the same seed gives the same batches.
BUILTIN_ORDER = ("image", "caption", "absence", "presence", "mcq", "distractor_image", "hybrid", "full")


@dataclass
class Example:
    """One (image, caption) of the records with all its absence-negated (true) and presence-negated (false)
    variants; a batch draws what its keys need from it."""

    image: str
    caption: str
    image_id: int | None = None
    absence: list[str] = field(default_factory=list)
    presence: list[str] = field(default_factory=list)
    absent_objects: list[str] = field(default_factory=list)
    present_objects: list[str] = field(default_factory=list)
    image_objects: list[str] = field(default_factory=list)  # present per any record of the image, any caption


class Pool(Sequence):
    """The examples of one split, indexable (MCQ fillers and distractor images come from any of them), with a
    memo for indexes a key builds once over the whole split."""

    def __init__(self, examples: Sequence[Example]):
        self.examples = examples
        self._memo: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index):
        return self.examples[index]

    def __iter__(self):
        return iter(self.examples)

    def once(self, name: str, make: Callable[[Sequence[Example]], Any]) -> Any:
        if name not in self._memo:
            self._memo[name] = make(self.examples)
        return self._memo[name]


@dataclass
class Draw:
    """What a key's builder sees for one micro-batch. ``rng`` is seeded from (seed, split, micro-batch, rank), so a
    batch is a pure function of those numbers (exact resume, no talk between processes); ``seed`` is the on-the-fly
    negation seed of the same numbers; ``settings`` is the trainer's config (e.g. ``mcq_affirmation_share``)."""

    examples: Sequence[Example]
    rng: random.Random
    pool: Pool
    settings: Any = None
    seed: int = 0
    context_length: int = 77  # texts made here are cut to fit it
    image_features: Any = None  # (N, D) features of the examples' images: only for ``after_images`` keys
    memo: dict = field(default_factory=dict)

    def once(self, name: str, make: Callable[[], Any]) -> Any:
        """A value several keys of one draw share (TNG's hybrid and full come from one negation pass)."""
        if name not in self.memo:
            self.memo[name] = make()
        return self.memo[name]


@dataclass(frozen=True)
class BatchKey:
    """``name``: the batch key; ``kind``: TEXT, CHOICES or IMAGE; ``build(draw)``: one value per example of the
    draw; ``usable(example)``: whether an example can supply it; ``after_images``: ``build`` reads
    ``draw.image_features``."""

    name: str
    kind: str
    build: Callable[[Draw], list]
    help: str = ""
    usable: Callable[[Example], bool] | None = None  # examples that cannot supply the key are left out (counted)
    after_images: bool = False

    def __post_init__(self):
        if self.kind not in (TEXT, CHOICES, IMAGE):
            raise ValueError(f"batch key {self.name!r}: kind {self.kind!r} is not one of {TEXT}, {CHOICES}, {IMAGE}")

    def provides(self) -> tuple[str, ...]:
        return (self.name, self.name + "_answer") if self.kind == CHOICES else (self.name,)


IMAGE_KEY = BatchKey("image", IMAGE, lambda draw: [e.image for e in draw.examples], "the example's image")
CAPTION = BatchKey("caption", TEXT, lambda draw: [e.caption for e in draw.examples], "the original (true) caption")


def _negated_variant(kind: str, help: str) -> BatchKey:
    """Key ``kind``: one of the example's ``kind``-negated captions, drawn at random; examples without one are
    left out."""
    return BatchKey(
        kind,
        TEXT,
        lambda draw: [draw.rng.choice(getattr(e, kind)) for e in draw.examples],
        help,
        usable=lambda e: bool(getattr(e, kind)),
    )


ABSENCE = _negated_variant("absence", "one absence-negated (true) caption")
PRESENCE = _negated_variant("presence", "one presence-negated (false) caption")
SHARED_KEYS = (IMAGE_KEY, CAPTION, ABSENCE, PRESENCE)


def resolve_keys(requires: Sequence[str], declared: Sequence[BatchKey]) -> list[BatchKey]:
    """The keys to build for ``requires``, in draw order; a name no key provides fails naming the declared ones.
    Keys made after the images need the ``image`` key (their builders read its features)."""
    by_name = {}
    for key in (*SHARED_KEYS, *declared):
        for name in key.provides():
            if by_name.setdefault(name, key) is not key:
                raise ValueError(f"batch key {name!r} is declared twice, by different objectives")
    unknown = [name for name in requires if name not in by_name and name not in MODEL_KEYS]
    if unknown:
        raise ValueError(
            f"no objective declares batch key(s) {unknown}; declared keys: {sorted(by_name)} "
            "(an objective adds a key with batch_keys = (BatchKey(...),))"
        )
    wanted = [by_name[name] for name in requires if name in by_name]
    if any(key.after_images for key in wanted):
        wanted.append(IMAGE_KEY)
    wanted = list(dict.fromkeys(wanted))
    rank = {name: i for i, name in enumerate(BUILTIN_ORDER)}
    return sorted(wanted, key=lambda key: rank.get(key.name, len(rank)))
