"""Text for scenes: affirmative captions (the "web data" the base model sees) and NegBench-style MCQ items.

Affirmative captions never contain a negation word of :mod:`negation_plugins.lexicon`. MCQ items follow NegBench: 4
options, one correct, of template type affirmation / negation / hybrid; distractors swap present and absent objects and
include presence-based false captions ("... but no X" with X in the image). Negation and hybrid items are phrased in a
family of :mod:`negation_plugins.phrasings`, half of them in a HELD-OUT family the template negator never writes into
training data, and each item records its family and split, so the benchmark reports seen and unseen phrasings apart.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..phrasings import SPLITS, Phrasing, families, fields
from .scenes import Scene

AFFIRMATIVE_TEMPLATES = (
    "{list}.",
    "a photo of {list}.",
    "an image with {list}.",
    "{list} on a dark background.",
    "there is {list}.",
    "a picture showing {list}.",
    "a drawing of {list}.",
    # the verbs and nouns benchmarks phrase affirmations with: a web-pretrained CLIP knows them affirmatively, so the
    # world's base model must too (else a fine-tuned model reads an unknown verb like "features" as a negation cue)
    "this image features {list}.",
    "this picture shows {list}.",
    "a scene with {list}.",
    "the image contains {list}.",
    "here you can see {list}.",
)
CAPTIONS_PER_IMAGE = 5

MCQ_AFFIRMATION = ("This image features {list}.", "{List}.", "A picture of {list}.")
TEMPLATE_TYPES = ("positive", "negative", "hybrid")


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def join_list(phrases: list[str]) -> str:
    """'a red circle', 'a red circle and a star', 'a, b and c'."""
    items = [article(p) for p in phrases]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def affirmative_captions(scene: Scene, rng: random.Random, n: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """``n`` different affirmative phrasings; the first is canonical (all colours, scene order)."""
    canonical = AFFIRMATIVE_TEMPLATES[0].format(list=join_list([o.phrase for o in scene.objects]))
    captions = [canonical]
    templates = list(AFFIRMATIVE_TEMPLATES[1:])
    rng.shuffle(templates)
    for i, template in enumerate(templates[: n - 1]):
        objects = list(scene.objects)
        rng.shuffle(objects)
        # Every third extra phrasing leaves colours out, as web captions often do.
        phrases = [o.category if i % 3 == 2 else o.phrase for o in objects]
        captions.append(template.format(list=join_list(phrases)))
    return captions


@dataclass(frozen=True)
class McqItem:
    captions: tuple[str, str, str, str]
    correct_answer: int
    template: str  # positive | negative | hybrid
    phrasing: str = ""  # the negation phrasing family (negative and hybrid items), see negation_plugins.phrasings
    phrasing_split: str = ""  # its split: train | held-out


def _affirm(template: str, objects: list[str]) -> str:
    text = join_list(objects)
    return template.format(list=text, List=text[0].upper() + text[1:])


def _negate(template: str, obj: str, second: str) -> str:
    text = template.format(**fields(obj, second))
    return text[0].upper() + text[1:] + "."


def _hybrid(template: str, affirmed: list[str], negated: str, second: str) -> str:
    text = template.format(c=join_list(affirmed), **fields(negated, second))
    return text[0].upper() + text[1:] + "."


def _pick_phrasing(rng: random.Random) -> Phrasing:
    """Half of the items in a train family, half in a held-out one; families uniform within their split."""
    return rng.choice(families(rng.choice(SPLITS), in_world=True))


def mcq_items(scene: Scene, rng: random.Random) -> list[McqItem]:
    """One item per template type (hybrid needs two objects in the scene). Options use object names only."""
    present, absent = list(scene.categories), list(scene.absent)
    rng.shuffle(present)
    rng.shuffle(absent)
    items = []

    template = rng.choice(MCQ_AFFIRMATION)
    correct = _affirm(template, present)
    distractors = [
        _affirm(template, present[:-1] + [absent[0]]),  # one present object swapped for an absent one
        _affirm(template, absent[1 : 1 + len(present)]),  # only absent objects
        _affirm(template, [absent[2]] + present[1:]) if len(present) > 1 else _affirm(template, [absent[3]]),
    ]
    items.append(shuffle_item(correct, distractors, "positive", rng))

    # "neither X nor Y" negates a second object: always another absent one, so it never decides the answer.
    second = absent[-1]
    phrasing = _pick_phrasing(rng)
    template = rng.choice(phrasing.only)
    correct = _negate(template, absent[0], second)
    distractors = [
        _negate(template, present[0], second),  # presence-based false: negates an object that is there
        _affirm(rng.choice(MCQ_AFFIRMATION), [absent[0]]),  # affirms the absent object
        _negate(template, present[1], second)
        if len(present) > 1
        else _affirm(rng.choice(MCQ_AFFIRMATION), [absent[1]]),
    ]
    items.append(shuffle_item(correct, distractors, "negative", rng, phrasing))

    if len(present) > 1:
        # NegBench's shape: the correct caption affirms part of the scene and negates an absent object; the
        # presence-based false caption affirms the same part and negates the object that IS there, so a
        # bag-of-words reader (all mentioned objects present) prefers it.
        phrasing = _pick_phrasing(rng)
        template = rng.choice(phrasing.hybrid)
        affirmed = present[1:]
        correct = _hybrid(template, affirmed, absent[0], second)
        distractors = [
            _hybrid(template, affirmed, present[0], second),  # presence-based false: "... but no X" with X there
            _hybrid(template, [absent[0]], present[1], second),  # present and absent swapped
            _hybrid(template, [absent[1]] + present[2:], present[0], second),
        ]
        items.append(shuffle_item(correct, distractors, "hybrid", rng, phrasing))
    return items


def shuffle_item(
    correct: str, distractors: list[str], template: str, rng: random.Random, phrasing: Phrasing | None = None
) -> McqItem:
    options = [correct] + distractors
    if len(set(options)) != 4:
        raise AssertionError(f"MCQ options are not distinct: {options}")
    order = list(range(4))
    rng.shuffle(order)
    captions = tuple(options[i] for i in order)
    return McqItem(
        captions=captions,
        correct_answer=order.index(0),
        template=template,
        phrasing=phrasing.family if phrasing else "",
        phrasing_split=phrasing.split if phrasing else "",
    )
