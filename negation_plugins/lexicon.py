"""The negation lexicon: the ways English says "not", as one table that every reader and writer of negation uses.

:data:`CUES` maps a cue phrase to a :class:`Cue`: its grammatical ``kind`` and which words it ``negates`` (the
phrase after it, "without cars"; the phrase before it, "cars are absent"; itself, "nothing"; or its clause,
"isn't"). Views derive from the table, so a new row reaches all of them:

* :data:`NEGATION_WORDS`, :func:`is_negated`, :func:`count_negations`: whether a caption already negates (negators
  refuse double negation, the LLM negator checks it added exactly one cue, the world's affirmative captions have
  none);
* :func:`cue_phrases`: e.g. the cues that negate the phrase after them;
* :func:`split_negations`: the phrases a text negates, by surface rules (negation-aware prompting in
  ``integrations.prompting``, the ``span-subtraction`` correction).
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
    "exclusion": "everything except X",
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
    "zero": Cue("determiner", "following"),
    "not": Cue("adverb", "following"),
    "never": Cue("adverb", "following"),
    "nor": Cue("conjunction", "following"),
    "without": Cue("preposition", "following"),
    "lacking": Cue("preposition", "following"),
    "with no": Cue("preposition", "following"),
    "free of": Cue("preposition", "following"),
    "devoid of": Cue("preposition", "following"),
    "bereft": Cue("preposition", "following"),
    "bereft of": Cue("preposition", "following"),
    "absence": Cue("preposition", "following"),
    "absence of": Cue("preposition", "following"),
    "in the absence of": Cue("preposition", "following"),
    "excluding": Cue("preposition", "following"),
    "sans": Cue("preposition", "following"),
    "minus": Cue("preposition", "following"),  # "a cake minus the candles"
    "nary": Cue("determiner", "following"),
    "with nary": Cue("preposition", "following"),
    "except": Cue("exclusion", "following"),
    "lack": Cue("verb", "following"),
    "lacks": Cue("verb", "following"),
    "excludes": Cue("verb", "following"),
    "avoids": Cue("verb", "following"),
    "avoiding": Cue("verb", "following"),
    "absent": Cue("adjective", "preceding"),
    "free": Cue("adjective", "preceding"),
    "gone": Cue("adjective", "preceding"),
    "vanished": Cue("adjective", "preceding"),
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


# ---------------------------------------------------------------------------------------------------------------
# Negated phrases: which words a cue negates, by surface rules (prompt routing, training-free corrections)

SPAN_CUE_PHRASES = cue_phrases(
    negates="following", kinds=("determiner", "adverb", "conjunction", "preposition", "exclusion")
)
SPAN_CUES = tuple(phrase for phrase in SPAN_CUE_PHRASES if " " not in phrase)
# longest first, so a longer cue wins over one it starts with
SPAN_MULTI_WORD_CUES = sorted(
    (tuple(phrase.split()) for phrase in SPAN_CUE_PHRASES if " " in phrase), key=len, reverse=True
)
NOT_DETERMINERS = {"a", "an", "any", "the", "one"}
STOP_WORDS = {
    "and",
    "but",
    "or",
    "while",
    "whereas",
    "though",
    "although",
    "because",
    "so",
    "yet",
    "then",
    "that",
    "which",
    "who",
    "whose",
    "where",
    "when",
    "as",
    "in",
    "on",
    "at",
    "near",
    "by",
    "under",
    "over",
    "above",
    "below",
    "behind",
    "beside",
    "next",
    "inside",
    "outside",
    "with",
    "from",
    "into",
    "onto",
    "of",
    "for",
    "to",
    "during",
    "against",
    "along",
    "around",
    "between",
    "through",
    "across",
    "is",
    "are",
    "was",
    "were",
    "be",
}
DETERMINERS = {"a", "an", "the", "some", "one", "two", "three", "several", "many", "his", "her", "their", "its", "my"}
_CLAUSE_PUNCTUATION = ",;:"
_DANGLING_CONNECTIVES = re.compile(
    r"^(?:(?:and|or|but)(?=[\s,;:]|$)[\s,;:]*)+|(?:[\s,;:]+(?:and|or|but))+$", re.IGNORECASE
)
_TOKEN = re.compile(r"[A-Za-z0-9'\-]+|[^\sA-Za-z0-9'\-]")


def split_negations(prompt: str) -> tuple[str, list[str]]:
    """``(rest, negated_phrases)``: the prompt without its negations, and the negated phrases in order. Repeated
    until nothing is left to split: cutting a span can join two words into a cue ("absence except cars of trees" ->
    "absence of trees"), so the rest never holds a negation."""
    rest, negated = _split_once(prompt)
    while True:
        again, more = _split_once(rest)
        if not more:
            return rest, negated
        rest, negated = again, negated + more


def _split_once(prompt: str) -> tuple[str, list[str]]:
    """One left-to-right pass of :func:`split_negations`."""
    tokens = [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(prompt)]
    words = [t[0].lower() for t in tokens]
    removed: list[tuple[int, int]] = []
    negated: list[str] = []
    i = 0
    while i < len(tokens):
        cue_end = _cue_length(words, i)
        if not cue_end:
            i += 1
            continue
        start = i + cue_end
        if words[i] == "not" and start < len(words) and words[start] in NOT_DETERMINERS:
            start += 1
        end = _phrase_end(words, start)
        if end == start:  # a cue with nothing to negate stays in the prompt
            i += cue_end
            continue
        removed.append((tokens[i][1], tokens[end - 1][2]))
        negated.append(prompt[tokens[start][1] : tokens[end - 1][2]])
        i = end
    return _without_spans(prompt, removed), negated


def _is_word(word: str) -> bool:
    return bool(re.match(r"[a-z0-9]", word))


def _cue_length(words: list[str], i: int) -> int:
    for phrase in SPAN_MULTI_WORD_CUES:
        if tuple(words[i : i + len(phrase)]) == phrase:
            return len(phrase)
    return 1 if words[i] in SPAN_CUES else 0


def _phrase_end(words: list[str], start: int) -> int:
    """Index just past the negated phrase that begins at ``start`` (== start when there is none)."""
    end = start
    while end < len(words):
        word = words[end]
        if not _is_word(word) or word in SPAN_CUES or _cue_length(words, end):
            break
        if word == "and" or word == "or":
            nxt = words[end + 1] if end + 1 < len(words) else ""
            if end == start or not _is_word(nxt) or nxt in STOP_WORDS or nxt in DETERMINERS or nxt in SPAN_CUES:
                break
            end += 1
            continue
        if word in STOP_WORDS:
            break
        end += 1
    while end > start and words[end - 1] in ("and", "or"):
        end -= 1
    return end


def _without_spans(prompt: str, spans: list[tuple[int, int]]) -> str:
    """The prompt with ``spans`` cut out; spaces around a cut collapse; a dangling ", " / "and" at either end goes."""
    if not spans:
        return prompt
    pieces, cursor = [], 0
    for begin, end in spans:
        pieces.append(prompt[cursor:begin])
        cursor = end
    pieces.append(prompt[cursor:])
    out = pieces[0]
    for piece in pieces[1:]:
        if out.endswith(" ") and (piece.startswith(" ") or piece[:1] in _CLAUSE_PUNCTUATION):
            out = out.rstrip(" ") + (" " if piece.startswith(" ") else "")
            piece = piece.lstrip(" ")
        out += piece
    out = _DANGLING_CONNECTIVES.sub("", out.strip(" " + _CLAUSE_PUNCTUATION))
    return out.strip(" " + _CLAUSE_PUNCTUATION)
