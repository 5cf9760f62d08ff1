"""Negation phrasing families: the surface forms a caption can say "X is not there" in, as data (the table is
``phrasings.toml`` beside this file, read once at import).

Each :class:`Phrasing` is one family (a cue and its syntactic positions: "no X" as determiner after the caption or
leading it, "without X", "X is absent", ...) with templates for two uses:

* ``hybrid``: the caption plus the absence of an object, ``{c}`` the caption body;
* ``only``: the negation alone, nothing affirmed.

Template fields: ``{o}`` the object, ``{a}`` with its article, ``{p}`` its plural; ``{a2}`` a second negated object
(only "neither X nor Y").

``split`` says who may use a family: ``"train"`` families are what the template negator writes into training data;
``"held-out"`` families are never written into training data and exist so a benchmark (the world's MCQ, the
negation probe) can measure whether a model learned *negation* or only this project's templates. A train family
adds exactly one negation word of :mod:`negation_plugins.lexicon` (negators refuse double negation); held-out
families need not (``"devoid of"``, ``"X is missing"`` carry no cue word the lexicon counts, like real captions).

``in_world = false`` marks a train family the synthetic world does not use: its MCQ does not ask it and its
pretraining's web negations do not draw it. Families added after the world's base model shipped carry it, so the
world, the shipped model and every figure measured on them stay as they were.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from .data.language import pluralize, with_article

SPLITS = ("train", "held-out")


@dataclass(frozen=True)
class Phrasing:
    family: str
    split: str
    hybrid: tuple[str, ...]
    only: tuple[str, ...]
    in_world: bool = True

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"phrasing {self.family!r}: split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if not self.hybrid or not self.only or any("{c}" not in t for t in self.hybrid):
            raise ValueError(f"phrasing {self.family!r}: needs hybrid templates with {{c}} and negation-only ones")


def _read_table(path: Path) -> tuple[Phrasing, ...]:
    """The families of a ``[SPLIT.FAMILY]`` TOML table, in file order."""
    table = tomllib.loads(path.read_text(encoding="utf-8"))
    return tuple(
        Phrasing(family, split, tuple(t["hybrid"]), tuple(t["only"]), t.get("in_world", True))
        for split, rows in table.items()
        for family, t in rows.items()
    )


PHRASINGS: tuple[Phrasing, ...] = _read_table(Path(__file__).with_name("phrasings.toml"))
BY_FAMILY = {p.family: p for p in PHRASINGS}


def families(split: str | None = None, in_world: bool = False) -> tuple[Phrasing, ...]:
    """The families of ``split`` ("train" / "held-out"), or all, in table order; ``in_world``: only those the
    synthetic world uses."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"phrasing split must be one of {', '.join(SPLITS)}, got {split!r}")
    return tuple(p for p in PHRASINGS if (split is None or p.split == split) and (p.in_world or not in_world))


def templates(use: str, split: str) -> tuple[str, ...]:
    """All ``use`` ("hybrid" / "only") templates of the families of ``split``, flat, in table order."""
    return tuple(t for p in families(split) for t in getattr(p, use))


def fields(obj: str, second: str | None = None) -> dict:
    """Template fields for negating ``obj`` (and ``second``, for "neither X nor Y"); ``{c}`` is the caller's."""
    out = {"o": obj, "a": with_article(obj), "p": pluralize(obj)}
    return out if second is None else {**out, "a2": with_article(second)}
