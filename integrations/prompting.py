"""Negation-aware prompting (off by default): move "without X" / "no X" / "not a X" into the negative prompt.

Even a negation-aware text encoder conditions a diffusion model on every noun it reads, so "a street without
cars" still pulls cars into the picture. Classifier-free guidance already has a slot for what must not
appear, the negative prompt::

    routed = route_negations("a street without cars, at night")
    routed.prompt            # "a street, at night"
    routed.negative_prompt   # "cars"
    pipe(**routed.pipeline_kwargs())

Rules: a cue from :mod:`negation_plugins.lexicon` that negates the phrase after it, verbs aside (today
``without``, ``no``, ``not``, ``never``, ``nor``, ``lacking``, ``with no``, ``free of``, ``devoid of`` and the
exclusions ``minus``, ``sans``, ``except``; ``not`` also eats a following a/an/any/the/one), is followed by the
negated phrase: the words up to a comma or other punctuation, a connective (and/but/or/
while/that/which/who/...) or a preposition (in/on/at/near/with/...). "and" continues the phrase
("without cars and trucks") unless it starts a new noun phrase ("without cars and a red bus"). Phrases are
exact substrings of the prompt.

Limits (documented, on purpose): it reads surface words only, so double negation ("not without"),
scope over clauses ("a dog that is not sleeping" routes "sleeping"), negated attributes ("a car that is
not red" routes "red") and negations spelled as verbs ("lacks", "missing", "empty of") are not understood;
contractions ("isn't", "aren't") are not cues. Use it for object absence, where it helps most.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from negation_plugins.lexicon import cue_phrases

ROUTED = cue_phrases(negates="following", kinds=("determiner", "adverb", "conjunction", "preposition", "exclusion"))
CUES = tuple(phrase for phrase in ROUTED if " " not in phrase)
# longest first, so a longer cue wins over one it starts with
MULTI_WORD_CUES = sorted((tuple(phrase.split()) for phrase in ROUTED if " " in phrase), key=len, reverse=True)
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


@dataclass
class RoutedPrompt:
    """The rewritten prompt, the phrases moved out of it, and the negative prompt to pass along."""

    prompt: str
    negated: list[str] = field(default_factory=list)
    negative_prompt: str | None = None

    def pipeline_kwargs(self) -> dict:
        return {"prompt": self.prompt, "negative_prompt": self.negative_prompt}


def split_negations(prompt: str) -> tuple[str, list[str]]:
    """``(rest, negated_phrases)``: the prompt without its negations, and the negated phrases in order."""
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


def route_negations(prompt: str, negative_prompt: str | None = None) -> RoutedPrompt:
    """Move explicit negations into the negative prompt (appended to any ``negative_prompt`` given)."""
    rest, negated = split_negations(prompt)
    if not negated:
        return RoutedPrompt(prompt=prompt, negated=[], negative_prompt=negative_prompt)
    parts = ([negative_prompt] if negative_prompt else []) + negated
    return RoutedPrompt(prompt=rest, negated=negated, negative_prompt=", ".join(parts))


def _is_word(word: str) -> bool:
    return bool(re.match(r"[a-z0-9]", word))


def _cue_length(words: list[str], i: int) -> int:
    for phrase in MULTI_WORD_CUES:
        if tuple(words[i : i + len(phrase)]) == phrase:
            return len(phrase)
    return 1 if words[i] in CUES else 0


def _phrase_end(words: list[str], start: int) -> int:
    """Index just past the negated phrase that begins at ``start`` (== start when there is none)."""
    end = start
    while end < len(words):
        word = words[end]
        if not _is_word(word) or word in CUES or _cue_length(words, end):
            break
        if word == "and" or word == "or":
            nxt = words[end + 1] if end + 1 < len(words) else ""
            if end == start or not _is_word(nxt) or nxt in STOP_WORDS or nxt in DETERMINERS or nxt in CUES:
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
