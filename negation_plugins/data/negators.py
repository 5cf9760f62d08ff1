"""Negators: turn an affirmative caption plus an object into a negated caption.

Contract (what ``negclip generate`` and third-party negators rely on):

* ``propose(items, vocabulary, rng) -> list[list[str]]``: per item, candidate objects that are probably ABSENT from
  its image, best first (the verifier then picks the first one it accepts).
* ``rewrite(items, objects, kind, rng) -> list[str | None]``: per item, the caption rewritten to negate
  ``objects[i]``; ``kind="absence"`` (object not in the image: the caption stays true) or ``"presence"`` (object in
  the image: the caption becomes false; the object is removed from the affirmative part first). ``None`` means
  "cannot negate this one" and is counted, never silently dropped.
* ``stats``: a Counter the command prints (e.g. ``fallbacks``).

Built-in: ``template`` (rules, microseconds per caption) here and ``llm`` (NegationCLIP's LLM pipeline), which
:mod:`negation_plugins.data.llm` registers itself.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..hookspecs import hookimpl
from ..lexicon import count_negations, is_negated
from ..phrasings import BY_FAMILY, families, fields
from .io import KINDS, CaptionItem
from .language import (
    lower_first,
    mentions,
    remove_mentions,
    strip_caption,
    upper_first,
    with_article,
)

CONTEXT_LENGTH = 77


@dataclass(frozen=True)
class NegationForms:
    """The templates a negator writes: ``hybrid`` (caption + absence of an object, "hybrid" in TNG-CLIP) and ``only``
    (the negation alone) of the chosen TRAIN phrasing families (held-out ones measure generalization to phrasings
    never trained on). {c}: caption body, {o}: object, {a}: with article, {p}: plural. Every template adds exactly ONE
    negation word, so outputs never double-negate."""

    hybrid: tuple[str, ...]
    only: tuple[str, ...]

    @classmethod
    def of(cls, names: str | Sequence[str] | None = None) -> NegationForms:
        """The forms of the train families ``names`` (a list or a comma-separated string; all of them if None)."""
        if names is None:
            chosen = families("train")
        else:
            wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
            for name in wanted:
                if name not in BY_FAMILY or BY_FAMILY[name].split != "train":
                    known = ", ".join(p.family for p in families("train"))
                    raise ValueError(f"phrasing family {name!r} is not a train family; train families: {known}")
            chosen = [BY_FAMILY[name] for name in dict.fromkeys(wanted)]
        if not chosen:
            raise ValueError("no phrasing family chosen")
        return cls(tuple(t for p in chosen for t in p.hybrid), tuple(t for p in chosen for t in p.only))


TRAIN_FORMS = NegationForms.of()
# Negating a whole caption (TNG-CLIP "full"): true for any image the caption does not describe.
FULL_TEMPLATES = (
    "this image does not show {c}",
    "this is not {c}",
    "there is nothing like {c} here",
    "not {c}",
    "the picture is not {c}",
    "you cannot see {c} here",
    "nothing here looks like {c}",
    "{c} is not what this image shows",
    "no part of this image shows {c}",
    "this scene is not {c}",
)
# When a caption is too long, the cue goes first so truncating the caption's tail keeps it.
SHORT_PREFIX_TEMPLATE = "no {o}: {c}"


@functools.lru_cache(maxsize=1)
def _clip_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


# open_clip's split pattern restricted to lower-case ASCII (no special tokens: texts with '<' take the slow path).
_ASCII_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")


@functools.lru_cache(maxsize=65536)
def _piece_tokens(piece: str) -> int:
    return _clip_tokenizer().bpe(piece).count(" ") + 1


def clip_token_count(text: str) -> int:
    """Number of CLIP BPE tokens of ``text`` (without start/end tokens), exactly as open_clip counts them.

    Printable ASCII without '&' needs neither ftfy nor HTML unescaping and is counted per regex piece with a
    cache (fast enough for the training step); anything else goes through open_clip's full ``encode``.
    """
    if text.isascii() and text.isprintable() and "&" not in text and "<" not in text:
        return sum(_piece_tokens(p) for p in _ASCII_PIECES.findall(text.lower()))
    return len(_clip_tokenizer().encode(text))


def fits_context(text: str, context_length: int = CONTEXT_LENGTH) -> bool:
    """Whether the text plus start/end tokens fits CLIP's context (each BPE token covers >= 1 character, so
    short texts are decided without tokenizing)."""
    if len(text) <= context_length - 2:
        return True
    return clip_token_count(text) + 2 <= context_length


def _finish(text: str, end: str) -> str:
    return upper_first(text) + (end or "")


@functools.lru_cache(maxsize=65536)
def _cached_token_count(text: str) -> int:
    return clip_token_count(text)


def _splits_cleanly(left: str, right: str) -> bool:
    """Whether open_clip's pre-tokenizer splits ``left + right`` exactly between the two (then token counts add)."""
    if not left or not right:
        return True
    a, b = left[-1], right[0]
    if a.isspace() or b.isspace():
        return True
    if "'" in (a, b) or not (a.isascii() and b.isascii()):
        return False
    if a.isalnum() and b.isalnum():
        return a.isdigit() or b.isdigit()  # digits are single pieces; letter+letter would merge
    return a.isalnum() != b.isalnum()  # punctuation runs merge with each other, never with letters/digits


def fits_parts(parts: Sequence[str], context_length: int = CONTEXT_LENGTH) -> bool:
    """``fits_context("".join(parts))``, counting each part once (cached) when the parts split cleanly: captions
    recur across templates and epochs, so the training step rarely tokenizes anything."""
    if sum(map(len, parts)) <= context_length - 2:
        return True
    parts = [p for p in parts if p]
    if all(_splits_cleanly(a, b) for a, b in itertools.pairwise(parts)):
        return sum(_cached_token_count(p) for p in parts) + 2 <= context_length
    return fits_context("".join(parts), context_length)


@functools.lru_cache(maxsize=256)
def _around(template: str) -> tuple[str, str]:
    prefix, _, suffix = template.partition("{c}")
    return prefix, suffix


def _fit(template: str, body: str, obj: str, end: str, context_length: int) -> str | None:
    values = fields(obj)
    prefix, suffix = (part.format(**values) for part in _around(template))
    if fits_parts((prefix, body, suffix, end), context_length):
        return prefix + body + suffix
    words = body.split()
    prefix, suffix = (part.format(**values) for part in _around(SHORT_PREFIX_TEMPLATE))
    while words:
        body = " ".join(words)
        if fits_parts((prefix, body, suffix, end), context_length):
            return prefix + body + suffix
        words = words[: max(0, len(words) - max(1, len(words) // 8))]
    return None


def hybrid(
    caption: str, obj: str, rng: random.Random, context_length: int = CONTEXT_LENGTH, forms: NegationForms = TRAIN_FORMS
) -> str | None:
    """Caption + the absence of ``obj`` (must not be mentioned in the caption); None when it is mentioned."""
    body, end = strip_caption(caption)
    if not body or mentions(body, obj):
        return None
    template = rng.choice(forms.hybrid)
    if not template.startswith("{c}"):
        body = lower_first(body)
    text = _fit(template, body, obj, end, context_length)
    return None if text is None else _finish(text, end)


def full(caption: str, rng: random.Random, context_length: int = CONTEXT_LENGTH) -> str | None:
    """Negation of a whole caption; None for a caption that is already negated (no double negation)."""
    body, end = strip_caption(caption)
    if not body or is_negated(body):
        return None
    prefix, suffix = _around(rng.choice(FULL_TEMPLATES))
    words = lower_first(body).split()
    while words:
        body = " ".join(words)
        if fits_parts((prefix, body, suffix, end), context_length):
            return _finish(prefix + body + suffix, end)
        words = words[: len(words) - max(1, len(words) // 8)]
    return None


def negation_only(caption: str, obj: str, rng: random.Random, forms: NegationForms = TRAIN_FORMS) -> str:
    """Just the negation, nothing affirmed ("there is no dog in this image"): true when ``obj`` is absent, false
    when it is there. Mixed into both kinds so bare negation cues are as common in true captions as in false ones
    (otherwise a model learns "a bare negation is false")."""
    _, end = strip_caption(caption)
    return _finish(rng.choice(forms.only).format(**fields(obj)), end or ".")


def leave_one_out(caption: str, objects: Sequence[str], rng: random.Random) -> str:
    """The caption without one of its mentioned ``objects`` (still true: a caption need not list everything); the
    caption itself when fewer than two are mentioned or the mention cannot be removed grammatically."""
    body, end = strip_caption(caption)
    mentioned = [o for o in dict.fromkeys(objects) if mentions(body, o)]
    if len(mentioned) < 2:
        return caption
    remainder = remove_mentions(body, rng.choice(mentioned))
    if not remainder or count_negations(remainder) != count_negations(body):
        return caption
    return remainder + end


def presence(
    caption: str,
    obj: str,
    other_objects: Sequence[str],
    rng: random.Random,
    context_length: int = CONTEXT_LENGTH,
    forms: NegationForms = TRAIN_FORMS,
) -> str | None:
    """A FALSE caption negating ``obj`` which is in the image: the mention of ``obj`` is removed from the caption
    (or, when that cannot be done grammatically, the caption is rebuilt from the image's other objects), then
    its absence is added. The result never both affirms and negates ``obj``."""
    body, end = strip_caption(caption)
    remainder = remove_mentions(body, obj) if body else None
    if remainder is not None and is_negated(remainder) and count_negations(remainder) != count_negations(body):
        remainder = None
    if remainder is None:
        others = [o for o in dict.fromkeys(other_objects) if o != obj and not mentions(o, obj)]
        remainder = _join([with_article(o) for o in others]) if others else ""
    if not remainder:
        text = rng.choice(forms.only).format(**fields(obj))
        return _finish(text, end)
    template = rng.choice(forms.hybrid)
    if not template.startswith("{c}"):
        remainder = lower_first(remainder)
    text = _fit(template, remainder, obj, end, context_length)
    return None if text is None else _finish(text, end)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def absence_candidates(item: CaptionItem, vocabulary: Sequence[str], rng: random.Random, k: int = 3) -> list[str]:
    """Up to ``k`` random vocabulary objects neither annotated in the image nor mentioned in its caption."""
    known = set(item.objects or ())
    picked: list[str] = []
    # A small random sample nearly always suffices; shuffle the whole vocabulary only when it does not.
    for pool in (rng.sample(vocabulary, min(len(vocabulary), 2 * k)), rng.sample(vocabulary, len(vocabulary))):
        for obj in pool:
            if obj not in known and obj not in picked and not mentions(item.caption, obj):
                picked.append(obj)
                if len(picked) == k:
                    return picked
    return picked


def presence_candidates(item: CaptionItem, vocabulary: Sequence[str]) -> list[str]:
    """Objects that ARE in the image: annotated ones, else vocabulary objects the caption mentions."""
    if item.objects is not None:
        return list(item.objects)
    return [o for o in vocabulary if mentions(item.caption, o)]


class Negator:
    """Base class of negator plugins (see the module docstring for the contract)."""

    name: str = ""
    description: str = ""

    def __init__(self, context_length: int = CONTEXT_LENGTH, **options):
        if options:
            raise TypeError(f"negator {self.name!r} got unknown option(s): {', '.join(sorted(options))}")
        self.context_length = context_length
        self.stats: Counter = Counter()

    def prepare(self, items: Sequence[CaptionItem], vocabulary: Sequence[str]) -> None:
        """Called once with the whole data set before generation (e.g. to gather statistics)."""

    def propose(self, items: Sequence[CaptionItem], vocabulary: Sequence[str], rng: random.Random) -> list[list[str]]:
        return [absence_candidates(item, vocabulary, rng) for item in items]

    def rewrite(
        self, items: Sequence[CaptionItem], objects: Sequence[str], kind: str, rng: random.Random
    ) -> list[str | None]:
        raise NotImplementedError

    @staticmethod
    def check_kind(kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


class TemplateNegator(Negator):
    name = "template"
    description = (
        f"Rule-based negation: {len(TRAIN_FORMS.hybrid)} train-family cue forms, articles/plurals, fits 77 tokens"
    )

    def __init__(
        self,
        mode: str = "random",
        negation_only_share: float = 0.25,
        partial_share: float = 0.5,
        context_length: int = CONTEXT_LENGTH,
        families: str | Sequence[str] | None = None,
    ):
        """``mode="contextual"`` prefers absent objects that often co-occur with the image's objects in the data
        set (plausible, hence harder, absences, like NegationCLIP's contextual LLM prompt); ``"random"`` does not.
        ``negation_only_share``: share of rewrites that keep only the negation ("there is no dog in this image"),
        for both kinds, as in NegBench's negation-type captions. ``partial_share``: share of absence rewrites that
        also leave out one of the image's other objects: a presence rewrite always drops the negated object's
        mention, so without this a model tells true from false by how many objects are listed. ``families``: the
        train phrasing families to write (names, or one comma-separated string; default all of them), e.g. to keep
        some out of training and measure them as unseen phrasings."""
        super().__init__(context_length=context_length)
        if mode not in ("random", "contextual"):
            raise ValueError(f"negator 'template': mode must be random or contextual, got {mode!r}")
        if not 0.0 <= negation_only_share <= 1.0:
            raise ValueError(f"negator 'template': negation_only_share must be in [0, 1], got {negation_only_share!r}")
        if not 0.0 <= partial_share <= 1.0:
            raise ValueError(f"negator 'template': partial_share must be in [0, 1], got {partial_share!r}")
        self.mode = mode
        self.negation_only_share = negation_only_share
        self.partial_share = partial_share
        try:
            self.forms = NegationForms.of(families)
        except ValueError as e:
            raise ValueError(f"negator 'template': families: {e}") from None
        self.cooccurrence: dict[str, Counter] = {}

    def prepare(self, items, vocabulary):
        if self.mode != "contextual":
            return
        self.cooccurrence = {}
        seen: set[str] = set()
        for item in items:
            objects = tuple(presence_candidates(item, vocabulary))
            if item.image in seen or not objects:
                continue
            seen.add(item.image)
            for a in objects:
                counts = self.cooccurrence.setdefault(a, Counter())
                counts.update(b for b in objects if b != a)

    def propose(self, items, vocabulary, rng):
        if self.mode != "contextual":
            return super().propose(items, vocabulary, rng)
        out = []
        for item in items:
            scores = Counter()
            for obj in presence_candidates(item, vocabulary):
                scores.update(self.cooccurrence.get(obj, {}))
            known = set(item.objects or ())
            ranked = [o for o, _ in scores.most_common() if o not in known and not mentions(item.caption, o)]
            plausible = ranked[:5]
            rng.shuffle(plausible)
            picked = plausible[:2]  # two of the most plausible absences, then a random one for variety
            picked += [o for o in absence_candidates(item, vocabulary, rng, k=3) if o not in picked][: 3 - len(picked)]
            out.append(picked)
        return out

    def rewrite(self, items, objects, kind, rng):
        self.check_kind(kind)
        return [self._rewrite_one(item, obj, kind, rng) for item, obj in zip(items, objects)]

    def _rewrite_one(self, item: CaptionItem, obj: str, kind: str, rng: random.Random) -> str | None:
        if kind == "absence" and mentions(item.caption, obj):
            return None  # the caption says it is there
        if self.negation_only_share and rng.random() < self.negation_only_share:
            text = negation_only(item.caption, obj, rng, self.forms)
            if fits_context(text, self.context_length):
                return text
        if kind == "absence":
            caption = item.caption
            if self.partial_share and rng.random() < self.partial_share:
                caption = leave_one_out(caption, item.objects or (), rng)
            return hybrid(caption, obj, rng, self.context_length, self.forms)
        return presence(item.caption, obj, item.objects or (), rng, self.context_length, self.forms)


@hookimpl
def register_negators(register):
    register(TemplateNegator)
