"""NegBench's MCQ objective: each image picks its correct caption among its K options, and how options are drawn.

NegBench fine-tunes with 0.99·CLIP + 0.01·MCQ; write that as ``--objective clip:0.99 --objective negbench-mcq:0.01``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch.nn.functional as F

from ..data.language import mentions, replace_mention
from .base import Objective
from .batch import CHOICES, BatchKey, Draw, Example

MCQ_OPTIONS = 4


def draw_questions(draw: Draw) -> list[tuple[list[str], int]]:
    """One question per example; the trainer's ``--mcq-affirmation-share`` and ``--mcq-scope-swap`` shape them."""
    share = getattr(draw.settings, "mcq_affirmation_share", 0.0)
    scope_swap = getattr(draw.settings, "mcq_scope_swap", False)
    return [mcq_options(example, draw.rng, draw.pool, share, scope_swap) for example in draw.examples]


MCQ = BatchKey("mcq", CHOICES, draw_questions, f"{MCQ_OPTIONS} captions per image, one of them true")


class NegBenchMCQObjective(Objective):
    name = "negbench-mcq"
    description = "NegBench: cross-entropy of each image over its K multiple-choice captions"
    requires = ("image", "mcq", "mcq_answer", "logit_scale")
    batch_keys = (MCQ,)

    def loss(self, batch):
        image, options = batch["image"], batch["mcq"]  # (N, D), (N, K, D)
        if options.dim() != 3 or options.shape[0] != image.shape[0]:
            raise ValueError(f"'mcq' must have shape (N, K, D) with N={image.shape[0]}; got {tuple(options.shape)}")
        logits = batch["logit_scale"] * (options @ image.unsqueeze(-1)).squeeze(-1)  # (N, K)
        return F.cross_entropy(logits, batch["mcq_answer"])


def mcq_options(
    example: Example,
    rng: random.Random,
    pool: Sequence[Example],
    affirmation_share: float = 0.0,
    scope_swap: bool = False,
) -> tuple[list[str], int]:
    """K options: one true caption (absence-negated if any, else the original) against its presence-negated
    (false) variants, filled up with captions of other images.

    With ``affirmation_share`` > 0, NegBench's question types: that share are affirmation questions (the original
    caption against copies naming an absent object in place of a present one, NegCLIP's swap), and negation
    questions get one such swap as a distractor (it affirms what the true caption negates). Without them a model
    learns negation at the expense of telling "a cross and a star" from "a cross and a ring".

    With ``scope_swap``, a negation question's first distractor is the true caption itself with its negated
    (absent) object replaced by a present one: the same words with the other object in the negation's scope, so the
    answer turns on which object is negated and not on the phrasing."""
    swaps = _swaps(example, rng) if affirmation_share else []
    if swaps and rng.random() < affirmation_share:
        true, false = example.caption, swaps[: MCQ_OPTIONS - 1]
    else:
        true = rng.choice(example.absence) if example.absence else example.caption
        scoped = _scope_swap(example, true, rng) if scope_swap else None
        false = [scoped] if scoped else []
        room = MCQ_OPTIONS - 1 - len(false) - (1 if swaps else 0)
        false += rng.sample(example.presence, min(len(example.presence), room))
        false += swaps[:1]
    others = None  # the other images' examples, listed only when random draws keep hitting this image
    for _ in range(8 * MCQ_OPTIONS):
        if len(false) == MCQ_OPTIONS - 1:
            break
        other = pool[rng.randrange(len(pool))]
        if other.image != example.image:
            false.append(_filler(other, rng))
    while len(false) < MCQ_OPTIONS - 1:
        others = others if others is not None else [e for e in pool if e.image != example.image]
        if others:
            false.append(_filler(rng.choice(others), rng))
        elif example.presence:  # a split with one image: repeat its own false captions
            false.append(rng.choice(example.presence))
        else:
            raise ValueError(
                f"MCQ options for {example.image}: no false caption to draw (it has no presence-negated caption and "
                "it is the only image in its split); add presence records, more images, or another objective"
            )
    options = [true, *false]
    rng.shuffle(options)
    return options, options.index(true)


def _swaps(example: Example, rng: random.Random) -> list[str]:
    """The caption with one mentioned present object replaced by an absent one, distinct variants in random order."""
    present = [o for o in example.present_objects if mentions(example.caption, o)]
    pairs = [(p, a) for p in present for a in example.absent_objects if a != p]
    rng.shuffle(pairs)
    variants = (replace_mention(example.caption, p, a) for p, a in pairs)
    return list(dict.fromkeys(v for v in variants if v and v != example.caption))


def _scope_swap(example: Example, negated_caption: str, rng: random.Random) -> str | None:
    """``negated_caption`` with the absent object it negates replaced by an object of the image it does not mention."""
    negated = [o for o in example.absent_objects if mentions(negated_caption, o)]
    present = [o for o in example.image_objects if not mentions(negated_caption, o)]
    if not negated or not present:
        return None
    swapped = replace_mention(negated_caption, negated[0], rng.choice(present))
    return swapped if swapped != negated_caption else None


def _filler(other: Example, rng: random.Random) -> str:
    return rng.choice(other.presence or other.absence or [other.caption])
