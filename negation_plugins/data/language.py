"""Small English helpers for negation: articles, plurals, object mentions and their removal (negation cues are in
:mod:`negation_plugins.lexicon`).

Rule-based on purpose: they run inside the training step (TNG-CLIP on-the-fly) and must cost microseconds.
"""

from __future__ import annotations

import functools
import re

IRREGULAR_PLURALS = {
    "person": "people",
    "man": "men",
    "woman": "women",
    "child": "children",
    "mouse": "mice",
    "foot": "feet",
    "tooth": "teeth",
    "goose": "geese",
    "knife": "knives",
    "leaf": "leaves",
    "shelf": "shelves",
    "wolf": "wolves",
    "loaf": "loaves",
    "life": "lives",
    "wife": "wives",
    "calf": "calves",
    "half": "halves",
    "ox": "oxen",
    "sheep": "sheep",
    "deer": "deer",
    "fish": "fish",
    "skis": "skis",
    "scissors": "scissors",
    "glasses": "glasses",
    "broccoli": "broccoli",
}
_SINGULARS = {plural: singular for singular, plural in IRREGULAR_PLURALS.items()}
# Words that take "a" despite a vowel letter, or "an" despite a consonant letter.
_A_BEFORE_VOWEL = re.compile(r"^(uni|use|usu|ute|uro|eu|one|once|ewe)", re.IGNORECASE)
_AN_BEFORE_CONSONANT = re.compile(r"^(hour|honest|honou?r|heir)", re.IGNORECASE)
MASS_NOUNS = frozenset({"broccoli", "scissors", "glasses", "skis", "water", "grass", "snow", "sand", "food", "hair"})


@functools.lru_cache(maxsize=4096)
def pluralize(noun: str) -> str:
    """'dog' -> 'dogs', 'bus' -> 'buses', 'traffic light' -> 'traffic lights', 'person' -> 'people'."""
    head, _, last = noun.rpartition(" ")
    lower = last.lower()
    if lower in IRREGULAR_PLURALS:
        plural = IRREGULAR_PLURALS[lower]
    elif re.search(r"(s|x|z|ch|sh)$", lower):
        plural = lower + "es"
    elif re.search(r"[^aeiou]y$", lower):
        plural = lower[:-1] + "ies"
    elif re.search(r"[^aeiou]o$", lower) and lower not in {"photo", "piano", "video", "zoo", "radio", "kimono"}:
        plural = lower + "es"
    else:
        plural = lower + "s"
    return f"{head} {plural}" if head else plural


@functools.lru_cache(maxsize=4096)
def singularize(noun: str) -> str:
    """Inverse of :func:`pluralize` for the common cases (used to match mentions)."""
    head, _, last = noun.rpartition(" ")
    lower = last.lower()
    if lower in _SINGULARS:
        single = _SINGULARS[lower]
    elif lower.endswith("ies") and len(lower) > 4:
        single = lower[:-3] + "y"
    elif re.search(r"(ses|xes|zes|ches|shes|oes)$", lower):
        single = lower[:-2]
    elif lower.endswith("s") and not lower.endswith("ss"):
        single = lower[:-1]
    else:
        single = lower
    return f"{head} {single}" if head else single


@functools.lru_cache(maxsize=4096)
def with_article(noun: str) -> str:
    """'a dog', 'an apple', 'a unicorn', 'an hour glass'; mass nouns keep no article ('broccoli')."""
    if noun.lower() in MASS_NOUNS:
        return noun
    if _AN_BEFORE_CONSONANT.match(noun):
        return "an " + noun
    if noun[:1].lower() in "aeiou" and not _A_BEFORE_VOWEL.match(noun):
        return "an " + noun
    return "a " + noun


def any_form(noun: str) -> str:
    """'any dog' for count nouns, 'any broccoli' for mass nouns (used after 'without')."""
    return "any " + noun


@functools.lru_cache(maxsize=4096)
def mention_pattern(noun: str) -> re.Pattern:
    """Regex matching the noun in singular or plural form as whole words."""
    forms = {noun.lower(), pluralize(noun.lower()), singularize(noun.lower())}
    alternatives = "|".join(sorted((re.escape(f).replace(r"\ ", r"\s+") for f in forms), key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)


def mentions(text: str, noun: str) -> bool:
    return mention_pattern(noun).search(text) is not None


def strip_caption(caption: str) -> tuple[str, str]:
    """``(body, end)``: the caption without surrounding space and its final punctuation, and that punctuation."""
    caption = " ".join(caption.split())
    end = ""
    while caption and caption[-1] in ".!?;,":
        end = end or caption[-1]
        caption = caption[:-1].rstrip()
    return caption, end


def lower_first(text: str) -> str:
    """Lower-case the first letter unless the first word looks like an acronym or 'I'."""
    first = text.split(" ", 1)[0]
    if len(first) > 1 and first[1:2].isupper() or first == "I":
        return text
    return text[:1].lower() + text[1:]


def upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


DETERMINERS = frozenset(
    [
        "a",
        "an",
        "the",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "some",
        "several",
        "many",
        "few",
        "any",
        "his",
        "her",
        "their",
        "its",
        "my",
        "our",
        "your",
        "this",
        "that",
        "these",
        "those",
    ]
)
# Words that end a noun phrase on the left: when scanning modifiers we stop at these (and do not remove them).
PHRASE_BOUNDARIES = frozenset(
    [
        "and",
        "or",
        "with",
        "of",
        "on",
        "in",
        "at",
        "by",
        "for",
        "to",
        "from",
        "near",
        "next",
        "behind",
        "under",
        "over",
        "above",
        "below",
        "beside",
        "between",
        "into",
        "onto",
        "while",
        "is",
        "are",
        "was",
        "were",
        "has",
        "have",
        "holding",
        "riding",
        "wearing",
        "carrying",
        "eating",
    ]
)


def replace_mention(caption: str, noun: str, replacement: str) -> str | None:
    """The caption with its first mention of ``noun`` replaced by ``replacement`` (same number, article fixed):
    'a red cross and a star' -> 'a red circle and a star'. NegCLIP's swap hard negative: it names an object the
    image lacks. None when ``noun`` is not mentioned."""
    match = mention_pattern(noun).search(caption)
    if match is None:
        return None
    found = match.group(0)
    plural = found.lower() != noun.lower() and found.lower() == pluralize(noun).lower()
    word = pluralize(replacement) if plural else replacement
    if found[:1].isupper():
        word = upper_first(word)
    before = caption[: match.start()]
    article = re.search(r"\b(an?)\s+$", before, re.IGNORECASE)
    if article and not plural:  # the article belongs to the noun when no adjective sits between them
        fixed = with_article(replacement).split(" ", 1)[0]
        fixed = upper_first(fixed) if article.group(1)[:1].isupper() else fixed
        before = before[: article.start(1)] + fixed + before[article.end(1) :]
    return before + word + caption[match.end() :]


def remove_mentions(caption: str, noun: str) -> str | None:
    """The caption with every mention of ``noun`` removed together with its noun phrase, or None if that cannot
    be done grammatically (the noun is the head of a clause rather than an item of a list or a 'with' phrase).

    Handles lists ('a red circle, a blue star and a square'), 'with' phrases ('a man with a dog on a bench') and
    their determiners/adjectives (up to two modifiers after a determiner).
    """
    words = caption.split()
    pattern = mention_pattern(noun)
    n_noun = len(noun.split())
    for _ in range(8):
        text = " ".join(words)
        match = pattern.search(text)
        if match is None:
            return " ".join(words) if words else None
        start = len(text[: match.start()].split())
        end = start + n_noun  # exclusive, in words
        # A trailing comma belongs to the separator, not the noun.
        last = words[end - 1]
        trailing_comma = last.endswith(",")
        # Scan left over modifiers to a determiner.
        left = start
        for k in range(1, 4):
            i = start - k
            if i < 0:
                break
            w = words[i].lower()
            if w.endswith(","):
                break
            if w in DETERMINERS:
                left = i
                break
            if w in PHRASE_BOUNDARIES or k == 3:
                break
        before = words[left - 1].lower() if left > 0 else None
        after = words[end].lower() if end < len(words) and not trailing_comma else None
        prev_ends_comma = before is not None and before.endswith(",")
        if before == "and" or before == "or":
            # "X, Y and NOUN" -> "X and Y"; "X and NOUN" -> "X".
            del words[left - 1 : end]
            _comma_to_and(words, left - 2)
        elif prev_ends_comma:
            # "X, NOUN, Y" / "X, NOUN and Y" -> "X, Y" / "X and Y".
            if not trailing_comma:
                words[left - 1] = words[left - 1][:-1]
            del words[left:end]
        elif trailing_comma or after in ("and", "or"):
            # "NOUN, X and Y" / "NOUN and X" -> "X and Y" / "X".
            del words[left : end + (0 if trailing_comma else 1)]
        elif before == "with":
            # "a man with a dog on a bench" -> "a man on a bench".
            del words[left - 1 : end]
        else:
            return None
        if not words:
            return None
    return None


def _comma_to_and(words: list[str], index: int) -> None:
    """After removing the last list item, make the new last separator 'and' ('a, b, c' -> 'a, b and c')."""
    for i in range(index, -1, -1):
        if words[i].endswith(","):
            words[i] = words[i][:-1]
            words.insert(i + 1, "and")
            return
        if words[i].lower() in ("and", "or"):
            return
