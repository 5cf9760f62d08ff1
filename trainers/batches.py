"""From negation records to the batch dict the objectives read.

Records of the same (image, caption) are grouped into one :class:`Example`: the original caption with all its
absence-negated (true) and presence-negated (false) variants. A batch draws one variant of each kind per example,
so an absence and a presence negation of the same caption meet in the same step (the hard-negative pairing that
Omni-NegCLIP's presence loss needs). What a batch holds is up to the objectives' batch keys
(:mod:`negation_plugins.losses.batch`); this module reads, groups, splits and orders the examples.

Batches are a pure function of (seed, micro-batch number, rank): the order of examples is a fixed permutation per
epoch and every random choice inside a batch uses a generator seeded from those numbers. That makes resuming from a
checkpoint exact and lets several processes each take their own shard without talking to each other.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from negation_plugins.losses.batch import BatchKey, Example
from negation_plugins.textfiles import read_text


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
    elif path.suffix.lower() in (".csv", ".tsv", ".pt"):  # NegBench NegCap/NegMCQ CSVs, CC-Neg: rows as records
        from negation_plugins.data.formats import read_rows

        records = [record for row in read_rows(str(path)) for record in row.records()]
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


def usable_examples(examples: list[Example], keys: list[BatchKey], source: str) -> tuple[list[Example], int]:
    """Examples that can supply every batch key; returns (usable, number dropped)."""
    checks = [key for key in keys if key.usable is not None]
    keep = [e for e in examples if all(key.usable(e) for key in checks)]
    if not keep:
        raise ValueError(
            f"--train {source}: none of the {len(examples)} examples can supply "
            f"{' and '.join(key.help for key in checks)} (batch keys {[key.name for key in checks]} of the "
            "objectives); generate records with those kinds (`negclip generate --kinds absence,presence`) or choose "
            "other objectives"
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


class EvalPlan:
    """Validation: fixed consecutive chunks (the same every time); chunk ``g * world_size + rank`` on ``rank``."""

    def __init__(self, n_examples: int, batch_size: int, world_size: int):
        self.n, self.batch_size, self.world_size = n_examples, batch_size, world_size

    def chunks(self) -> int:
        return -(-self.n // self.batch_size)

    def indices(self, micro_batch: int, rank: int) -> list[int]:
        start = (micro_batch * self.world_size + rank) * self.batch_size
        return list(range(min(start, self.n), min(start + self.batch_size, self.n)))


def batch_rng(seed: int, micro_batch: int, rank: int, split: str = "train") -> random.Random:
    return random.Random(f"{seed}-{split}-{micro_batch}-{rank}")
