"""Negation phrasing families: the surface forms a caption can say "X is not there" in, as data.

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
"""

from __future__ import annotations

from dataclasses import dataclass

from .data.language import pluralize, with_article

SPLITS = ("train", "held-out")


@dataclass(frozen=True)
class Phrasing:
    family: str
    split: str
    hybrid: tuple[str, ...]
    only: tuple[str, ...]

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"phrasing {self.family!r}: split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if not self.hybrid or not self.only or any("{c}" not in t for t in self.hybrid):
            raise ValueError(f"phrasing {self.family!r}: needs hybrid templates with {{c}} and negation-only ones")


PHRASINGS: tuple[Phrasing, ...] = (
    # --- train: what the template negator writes -------------------------------------------------------------
    Phrasing(
        "no",
        "train",
        hybrid=("{c} with no {o}", "{c} but no {p}", "{c}, and no {p}", "No {o} is visible, but {c}"),
        only=("no {p} here", "this image shows no {o}", "a picture with no {o}"),
    ),
    Phrasing(
        "without",
        "train",
        hybrid=("{c}, without {a}", "Without {a}, {c}", "{c}, without any {p}"),
        only=("an image without {a}", "a picture without any {p}"),
    ),
    Phrasing(
        "but-not",
        "train",
        hybrid=("{c}, but not {a}", "{c}, not {a}", "Not {a}, just {c}"),
        only=("not {a} in sight", "not {a} to be found"),
    ),
    Phrasing(
        "not-a-single",
        "train",
        hybrid=("{c}, not a single {o} in sight", "Not a single {o}, just {c}"),
        only=("not a single {o} can be seen", "not one {o} is shown"),
    ),
    Phrasing(
        "does-not",
        "train",
        hybrid=("{c}, which does not include {a}", "{c}; the picture does not show any {p}"),
        only=(
            "this image does not show {a}",
            "this image does not feature {a}",
            "the picture does not include any {p}",
        ),
    ),
    Phrasing(
        "absent",
        "train",
        hybrid=("{c}; {p} are absent", "{c}, with {a} absent"),
        only=("{p} are absent from this picture", "{a} is absent"),
    ),
    Phrasing(
        "nothing-like",
        "train",
        hybrid=("{c}, with nothing like {a}", "{c}, and nothing that looks like {a}"),
        only=("nothing that looks like {a} appears here", "nothing like {a} is shown"),
    ),
    Phrasing("free-of", "train", hybrid=("{c}, free of {p}",), only=("a picture free of {p}",)),
    Phrasing(
        "not-present",
        "train",
        hybrid=("{c}, with {a} not present", "{c}; {a} cannot be seen"),
        only=("{a} cannot be seen here", "{a} is not present"),
    ),
    Phrasing("never", "train", hybrid=("{c}; {a} never appears",), only=("{a} never appears in this picture",)),
    Phrasing(
        "no-sign-of",
        "train",
        hybrid=("{c}, with no sign of {a}", "{c}; no trace of {p} anywhere"),
        only=("no sign of {a} anywhere", "this picture shows no trace of {p}"),
    ),
    Phrasing("zero", "train", hybrid=("{c}, and zero {p}", "{c} with zero {p}"), only=("zero {p} in this picture",)),
    Phrasing(
        "none-of",
        "train",
        hybrid=("{c}; none of them is {a}",),
        only=("none of the things here is {a}", "none of what this picture shows is {a}"),
    ),
    # --- held-out: never in training data; measured separately ------------------------------------------------
    Phrasing(
        "x-free",
        "held-out",
        hybrid=("{c}, in an otherwise {o}-free scene",),
        only=("a {o}-free picture", "this scene is completely {o}-free"),
    ),
    Phrasing(
        "lacking",
        "held-out",
        hybrid=("{c}, lacking {a}", "{c}; the picture lacks {a}"),
        only=("a picture lacking {a}", "this image lacks {a}"),
    ),
    Phrasing(
        "contraction",
        "held-out",
        hybrid=("{c}, but there isn't any {o}", "{c}; it doesn't contain {a}"),
        only=("this image doesn't contain {a}", "there isn't any {o} here", "there aren't any {p} in this picture"),
    ),
    Phrasing(
        "without-a-single",
        "held-out",
        hybrid=("{c}, without a single {o}",),
        only=("a picture without a single {o}",),
    ),
    Phrasing(
        "nothing-resembling",
        "held-out",
        hybrid=("{c}, and nothing resembling {a}",),
        only=("nothing resembling {a} is shown",),
    ),
    Phrasing(
        "empty-of",
        "held-out",
        hybrid=("{c}, but empty of {p}",),
        only=("a picture empty of {p}", "a scene empty of {p}"),
    ),
    Phrasing(
        "there-are-no",
        "held-out",
        hybrid=("{c}; there are no {p} here", "There is no {o} here, only {c}"),
        only=("there is no {o} in this image", "there are no {p} here"),
    ),
    Phrasing(
        "nowhere",
        "held-out",
        hybrid=("{c}, with {a} nowhere to be seen",),
        only=("{a} is nowhere to be seen",),
    ),
    Phrasing("devoid-of", "held-out", hybrid=("{c}, devoid of {p}",), only=("a scene devoid of {p}",)),
    Phrasing(
        "implicit-verb",
        "held-out",
        hybrid=("{c}, with {a} missing", "{c}; {a} fails to appear", "{c}, omitting {a}"),
        only=("{a} is missing from this picture", "{a} fails to appear here"),
    ),
    Phrasing(
        "neither-nor",
        "held-out",
        hybrid=("{c}, but neither {a} nor {a2}",),
        only=("neither {a} nor {a2} is shown", "this picture shows neither {a} nor {a2}"),
    ),
)
BY_FAMILY = {p.family: p for p in PHRASINGS}


def families(split: str | None = None) -> tuple[Phrasing, ...]:
    """The families of ``split`` ("train" / "held-out"), or all, in table order."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"phrasing split must be one of {', '.join(SPLITS)}, got {split!r}")
    return tuple(p for p in PHRASINGS if split is None or p.split == split)


def templates(use: str, split: str) -> tuple[str, ...]:
    """All ``use`` ("hybrid" / "only") templates of the families of ``split``, flat, in table order."""
    return tuple(t for p in families(split) for t in getattr(p, use))


def fields(obj: str, second: str | None = None) -> dict:
    """Template fields for negating ``obj`` (and ``second``, for "neither X nor Y"); ``{c}`` is the caller's."""
    out = {"o": obj, "a": with_article(obj), "p": pluralize(obj)}
    return out if second is None else {**out, "a2": with_article(second)}
