"""The negation lexicon: the ways English says "not", as one table that every reader and writer of negation uses.

:data:`CUES` maps a cue phrase to a :class:`Cue`: its grammatical ``kind`` and which words it ``negates`` (the
phrase after it, "without cars"; the phrase before it, "cars are absent"; itself, "nothing"; or its clause,
"isn't"). Views derive from the table, so a new row reaches all of them:

* :data:`NEGATION_WORDS`, :func:`is_negated`, :func:`count_negations`: whether a caption already negates (negators
  refuse double negation, the LLM negator checks it added exactly one cue, the world's affirmative captions have
  none);
* :func:`cue_phrases`: e.g. negation-aware prompting routes the cues that negate the phrase after them
  (``integrations.prompting``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

NEGATES = ("following", "preceding", "itself", "clause")
KINDS = {
    "determiner": "no X",
    "adverb": "not X, never X",
    "conjunction": "nor X",
    "preposition": "without X, free of X",
    "exclusion": "except X, minus X",
    "verb": "lacks X",
    "pronoun": "nothing, none: the cue is the negated thing",
    "adjective": "X is absent, X free",
    "auxiliary": "isn't, cannot: negates its clause",
}
# "everything except X" names what a set leaves out; it does not state that X is absent, so it does not make a
# caption negated (it still marks a phrase a prompt does not want).
UNCOUNTED_KINDS = frozenset({"exclusion"})
CONTRACTION = "n't"  # any word ending in it negates its clause, listed or not
CONTRACTIONS = "isn't aren't wasn't weren't doesn't don't didn't can't won't hasn't haven't".split()


@dataclass(frozen=True)
class Cue:
    kind: str
    negates: str

    def __post_init__(self):
        if self.kind not in KINDS or self.negates not in NEGATES:
            raise ValueError(
                f"cue kind {self.kind!r}, negates {self.negates!r}: kind must be one of {', '.join(KINDS)}; "
                f"negates one of {', '.join(NEGATES)}"
            )


CUES: dict[str, Cue] = {
    "no": Cue("determiner", "following"),
    "not": Cue("adverb", "following"),
    "never": Cue("adverb", "following"),
    "nor": Cue("conjunction", "following"),
    "without": Cue("preposition", "following"),
    "lacking": Cue("preposition", "following"),
    "with no": Cue("preposition", "following"),
    "free of": Cue("preposition", "following"),
    "devoid of": Cue("preposition", "following"),
    "minus": Cue("exclusion", "following"),
    "sans": Cue("exclusion", "following"),
    "except": Cue("exclusion", "following"),
    "lack": Cue("verb", "following"),
    "lacks": Cue("verb", "following"),
    "absent": Cue("adjective", "preceding"),
    "free": Cue("adjective", "preceding"),
    "nothing": Cue("pronoun", "itself"),
    "none": Cue("pronoun", "itself"),
    "nobody": Cue("pronoun", "itself"),
    "nowhere": Cue("pronoun", "itself"),
    "neither": Cue("pronoun", "itself"),
    "cannot": Cue("auxiliary", "clause"),
    **{contraction: Cue("auxiliary", "clause") for contraction in CONTRACTIONS},
}


def cue_phrases(*, negates: str | None = None, kinds: Iterable[str] | None = None) -> tuple[str, ...]:
    """Cue phrases in table order, those that negate ``negates`` and/or are of one of ``kinds``."""
    return tuple(
        phrase
        for phrase, cue in CUES.items()
        if (negates is None or cue.negates == negates) and (kinds is None or cue.kind in kinds)
    )


# Counted word by word: a multi-word cue counts through its words ("with no" through "no"; "devoid of" has no
# counted word, so it is not counted, as before the lexicon).
NEGATION_WORDS = frozenset(p for p in cue_phrases(kinds=set(KINDS) - UNCOUNTED_KINDS) if " " not in p)
_WORD = re.compile(r"[A-Za-z']+")


def _is_cue_word(word: str) -> bool:
    word = word.lower()
    return word in NEGATION_WORDS or word.endswith(CONTRACTION)


@functools.lru_cache(maxsize=65536)
def is_negated(text: str) -> bool:
    """Whether the text already contains a negation cue word."""
    return any(_is_cue_word(w) for w in _WORD.findall(text))


def count_negations(text: str) -> int:
    return sum(_is_cue_word(w) for w in _WORD.findall(text))
