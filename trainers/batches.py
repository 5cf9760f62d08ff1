"""From negation records to the batch dict the objectives read.

Records of the same (image, caption) are grouped into one :class:`Example`: the original caption with all its
absence-negated (true) and presence-negated (false) variants. A batch draws one variant of each kind per example,
so an absence and a presence negation of the same caption meet in the same step (the hard-negative pairing that
Omni-NegCLIP's presence loss needs). Only the keys the chosen objectives ``require`` are built.

Batches are a pure function of (seed, micro-batch number, rank): the order of examples is a fixed permutation per
epoch and every random choice inside a batch uses a generator seeded from those numbers. That makes resuming from a
checkpoint exact and lets several processes each take their own shard without talking to each other.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from negation_plugins.data.language import mentions, replace_mention
from negation_plugins.textfiles import read_text

TEXT_KEYS = ("caption", "absence", "presence", "hybrid", "full")
MCQ_OPTIONS = 4


@dataclass
class Example:
    image: str
    caption: str
    image_id: int | None = None
    absence: list[str] = field(default_factory=list)
    presence: list[str] = field(default_factory=list)
    absent_objects: list[str] = field(default_factory=list)
    present_objects: list[str] = field(default_factory=list)
    image_objects: list[str] = field(default_factory=list)  # present per any record of the image, any caption


def _get(record, name, default=None):
    return record.get(name, default) if isinstance(record, dict) else getattr(record, name, default)


def group_records(records, source: str) -> list[Example]:
    """One Example per (image, caption); records' ``kind`` decides whether the negation is true or false."""
    examples: dict[tuple[str, str], Example] = {}
    for number, record in enumerate(records, 1):
        image, caption = _get(record, "image"), _get(record, "caption")
        if not image or not caption:
            raise ValueError(f"{source}: record {number} has no image or caption: {record!r}")
        key = (str(image), str(caption))
        example = examples.get(key)
        if example is None:
            example = examples[key] = Example(image=str(image), caption=str(caption), image_id=_get(record, "image_id"))
        negated = _get(record, "negated_caption")
        objects = list(_get(record, "objects") or [])
        kind = _get(record, "kind") or ("absence" if negated else None)
        if negated and kind == "absence":
            example.absence.append(str(negated))
            example.absent_objects.extend(o for o in objects if o not in example.absent_objects)
        elif negated and kind == "presence":
            example.presence.append(str(negated))
            example.present_objects.extend(o for o in objects if o not in example.present_objects)
        elif negated:
            raise ValueError(f"{source}: record {number} has kind {kind!r}; expected 'absence' or 'presence'")
        elif kind is None:
            example.present_objects.extend(o for o in objects if o not in example.present_objects)
    image_objects: dict[str, list[str]] = {}
    for example in examples.values():
        seen = image_objects.setdefault(example.image, [])
        seen.extend(o for o in example.present_objects if o not in seen)
    for example in examples.values():
        example.image_objects = image_objects[example.image]
    return list(examples.values())


def load_examples(train: str, negation: str, images: str | None, instances: str | None) -> list[Example]:
    """Read --train in any supported format; an empty or unreadable file fails naming the file."""
    from negation_plugins.data import io

    path = Path(train)
    if path.stat().st_size == 0:
        raise ValueError(f"--train {path}: file is empty")
    if negation == "on-the-fly":
        records = io.read_coco_captions(path, instances=instances, images=images).items
    elif _is_coco_without_negations(path):
        raise ValueError(
            f"--train {path} is a COCO captions file without negated captions; generate records with "
            "`negclip generate` or train with --negation on-the-fly --objective tng (TNG-CLIP templates) and --instances"
        )
    else:
        records = io.read_negation_records(path)
    examples = group_records(records, str(path))
    if not examples:
        raise ValueError(f"--train {path}: no training records")
    return examples


def _is_coco_without_negations(path: Path) -> bool:
    if path.suffix != ".json":
        return False
    try:
        data = json.loads(read_text(path))
    except (ValueError, UnicodeDecodeError):
        return False
    annotations = data.get("annotations") if isinstance(data, dict) else None
    return bool(annotations) and not any("updated_caption" in a for a in annotations)


def usable_examples(examples: list[Example], requires: tuple[str, ...], source: str) -> tuple[list[Example], int]:
    """Examples that can supply every required key; returns (usable, number dropped)."""
    needs_absence = "absence" in requires
    needs_presence = "presence" in requires
    keep = [e for e in examples if (e.absence or not needs_absence) and (e.presence or not needs_presence)]
    if not keep:
        wanted = [k for k in ("absence", "presence") if k in requires]
        raise ValueError(
            f"--train {source}: none of the {len(examples)} examples has the {' and '.join(wanted)}-negated captions "
            f"the objectives need (they require {list(requires)}); generate records with those kinds "
            "(`negclip generate --kinds absence,presence`) or choose other objectives"
        )
    return keep, len(examples) - len(keep)


def split_by_image(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out whole images (never the same picture in train and val)."""
    images = sorted({e.image for e in examples})
    random.Random(f"{seed}-split").shuffle(images)
    n_val = round(len(images) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(images) > 1:
        n_val = 1
    if n_val >= len(images):
        raise ValueError(f"--val-fraction {val_fraction} leaves no training images ({len(images)} images in all)")
    val_images = set(images[:n_val])
    return [e for e in examples if e.image not in val_images], [e for e in examples if e.image in val_images]


class BatchPlan:
    """Which examples form micro-batch ``g`` on rank ``r`` (see the module docstring)."""

    def __init__(self, n_examples: int, batch_size: int, world_size: int, seed: int):
        self.n = n_examples
        self.batch_size = min(batch_size, n_examples)
        self.world_size = world_size
        self.seed = seed
        self._perms: dict[int, list[int]] = {}

    def _permutation(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            order = list(range(self.n))
            random.Random(f"{self.seed}-epoch-{epoch}").shuffle(order)
            self._perms = {epoch: order}
        return self._perms[epoch]

    def indices(self, micro_batch: int, rank: int) -> list[int]:
        start = (micro_batch * self.world_size + rank) * self.batch_size
        out = []
        for position in range(start, start + self.batch_size):
            out.append(self._permutation(position // self.n)[position % self.n])
        return out

    def micro_batches_per_epoch(self) -> float:
        return self.n / (self.batch_size * self.world_size)


def batch_rng(seed: int, micro_batch: int, rank: int, split: str = "train") -> random.Random:
    return random.Random(f"{seed}-{split}-{micro_batch}-{rank}")


def build_texts(
    examples: list[Example],
    requires: tuple[str, ...],
    rng: random.Random,
    pool: list[Example],
    affirmation_share: float = 0.0,
    scope_swap: bool = False,
) -> tuple[dict[str, list[str]], list[int] | None]:
    """Captions per text key, MCQ options flattened (N*K) and answers. ``pool`` supplies MCQ fillers;
    ``affirmation_share`` and ``scope_swap``: see :func:`mcq_options`."""
    texts: dict[str, list[str]] = {}
    if "caption" in requires or "hybrid" in requires or "full" in requires:
        texts["caption"] = [e.caption for e in examples]
    if "absence" in requires:
        texts["absence"] = [rng.choice(e.absence) for e in examples]
    if "presence" in requires:
        texts["presence"] = [rng.choice(e.presence) for e in examples]
    answers = None
    if "mcq" in requires:
        texts["mcq"], answers = [], []
        for example in examples:
            options, answer = mcq_options(example, rng, pool, affirmation_share, scope_swap)
            texts["mcq"].extend(options)
            answers.append(answer)
    return texts, answers


def mcq_options(
    example: Example,
    rng: random.Random,
    pool: list[Example],
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


def distractor_images(
    examples: list[Example], rng: random.Random, absent_index: dict[str, list[int]], pool: list[Example]
) -> list[str]:
    """For CoN-CLIP: per example, an image where its presence-negated object is absent (so the negated caption
    fits it better); a random other image when the records name no such image."""
    out = []
    for example in examples:
        candidates = [i for obj in example.present_objects for i in absent_index.get(obj, [])]
        candidates = [i for i in candidates if pool[i].image != example.image]
        pick = pool[rng.choice(candidates)] if candidates else pool[rng.randrange(len(pool))]
        out.append(pick.image)
    return out


def absent_object_index(pool: list[Example]) -> dict[str, list[int]]:
    index: dict[str, list[int]] = {}
    for i, example in enumerate(pool):
        for obj in example.absent_objects:
            index.setdefault(obj, []).append(i)
    return index
