"""The ``icons`` world: a second world for REPORTING ONLY (never for choosing settings), built to differ from
``shapes`` in everything a recipe could latch onto.

* Renderer: mid-tone backgrounds with stripes or checks instead of a dark plain one; objects drawn solid, striped or
  outlined, in a wider range of sizes (the largest reach into the next cell), a fifth partly hidden behind a
  background-coloured bar.
* Vocabulary: 8 everyday icons and 4 colours, none of them a word of the ``shapes`` world.
* Caption grammar: its own frames and verbs ("this frame holds ...", "we can spot ...", "... against a patterned
  backdrop").
* MCQ: its own affirmation phrasings, and negation cue families of its own (:data:`PHRASINGS`, none of
  ``phrasings.toml``), all on the held-out split: no negator writes them into training data. Its affirmation
  questions also offer a false negation ("you will not find a kite here", the kite being there), the distractor a
  model that learned "a negation cue marks the answer" picks.
* Its base model's rare web negations draw these families as well as the project's (a web CLIP has seen "no").
"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

from ..phrasings import Phrasing, fields
from .captions import McqItem, join_list, shuffle_item
from .scenes import Layout, Scene, centre

CATEGORIES = ("kite", "moon", "heart", "bolt", "leaf", "bell", "house", "boat")
COLOURS = {
    "purple": (130, 40, 170),
    "orange": (250, 130, 10),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}
LAYOUT = Layout(CATEGORIES, tuple(COLOURS), jitter=0.1, scale=(0.6, 0.88))
BACKGROUNDS = ((150, 135, 110), (100, 125, 140), (125, 150, 115))  # tan, slate, sage
TEXTURES = ("solid", "striped", "outlined")

AFFIRMATIVE_TEMPLATES = (
    "icons of {list}.",
    "this frame holds {list}.",
    "we can spot {list}.",
    "the view includes {list}.",
    "in view: {list}.",
    "{list} against a patterned backdrop.",
    "an illustration depicting {list}.",
    "{list} drawn in flat colours.",
    "a tile displaying {list}.",
    # the phrasings of this world's MCQ affirmation questions: its base model knows them affirmatively
    "this picture contains {list}.",
    "visible here: {list}.",
    "{list} can be spotted.",
)
MCQ_AFFIRMATION = ("This picture contains {list}.", "Visible here: {list}.", "{List} can be spotted.")

# Negation cue families of this world only (none is a family of phrasings.toml), all held out from training.
PHRASINGS = (
    Phrasing(
        "left-out",
        "held-out",
        ("{c}, with {p} left out", "{c}; every {o} is left out"),
        ("{p} are left out of this picture", "every {o} is left out here"),
    ),
    Phrasing(
        "not-among",
        "held-out",
        ("{c}; {p} are not among them", "{c}, and {a} is not among them"),
        ("{p} are not among the things shown", "{a} is not among these icons"),
    ),
    Phrasing(
        "out-of-the-picture",
        "held-out",
        ("{c}, and {a} is out of the picture", "{c}; any {o} is out of the picture"),
        ("{a} is out of the picture", "every {o} is out of the picture here"),
    ),
    Phrasing(
        "removed",
        "held-out",
        ("{c}, with every {o} removed", "{c}; the {p} have been removed"),
        ("every {o} has been removed from this frame", "the {p} have been removed"),
    ),
    Phrasing(
        "turns-up",
        "held-out",
        ("{c}, though no {o} turns up", "{c}; no {o} turns up anywhere"),
        ("no {o} turns up in this frame", "no {o} turns up here"),
    ),
    Phrasing(
        "will-not-find",
        "held-out",
        ("{c}; you will not find {a}", "{c}, but you will not find any {p}"),
        ("you will not find {a} here", "you will not find any {p} in this frame"),
    ),
)


def render(scene: Scene, image_size: int = 32) -> Image.Image:
    """Draw the scene (RGB, ``image_size`` square): textured backdrop, textured objects, some partly occluded."""
    rng = random.Random(scene.noise_seed)
    base = rng.choice(BACKGROUNDS)
    pattern, period = rng.choice(("stripes", "checks", "noise")), rng.choice((3, 4, 6))
    image = Image.new("RGB", (image_size, image_size), base)
    pixels = image.load()
    for y in range(image_size):
        for x in range(image_size):
            if pattern == "stripes":
                shade = 14 if (x + y) // period % 2 else -14
            elif pattern == "checks":
                shade = 14 if (x // period + y // period) % 2 else -14
            else:
                shade = 0
            d = shade + rng.randint(-10, 10)
            pixels[x, y] = tuple(min(255, max(0, v + d)) for v in base)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy, r = centre(obj, image_size)
        colour = COLOURS[obj.colour]
        texture = rng.choice(TEXTURES)
        edge = tuple(255 - v for v in base) if texture == "outlined" else None
        _draw_icon(draw, obj.category, cx, cy, r, colour, edge)
        if texture == "striped":  # darker bands across the object, clipped to its own pixels
            _stripe(image, cx, cy, r, colour)
        if rng.random() < 0.2:  # a background-coloured bar hides part of the object
            w = max(1.0, r * 0.25)
            offset = rng.uniform(-0.5, 0.5) * r
            if rng.random() < 0.5:
                draw.rectangle((cx - r, cy + offset - w / 2, cx + r, cy + offset + w / 2), fill=base)
            else:
                draw.rectangle((cx + offset - w / 2, cy - r, cx + offset + w / 2, cy + r), fill=base)
    return image


def _stripe(image: Image.Image, cx: float, cy: float, r: float, colour) -> None:
    pixels, size = image.load(), image.size[0]
    darker = tuple(v * 3 // 5 for v in colour)
    for y in range(max(0, int(cy - r)), min(size, int(cy + r) + 1), 3):
        for x in range(max(0, int(cx - r)), min(size, int(cx + r) + 1)):
            if pixels[x, y] == colour:
                pixels[x, y] = darker


def _draw_icon(draw: ImageDraw.ImageDraw, category: str, cx: float, cy: float, r: float, fill, edge) -> None:
    style = {"fill": fill, "outline": edge}
    if category == "kite":
        draw.polygon([(cx, cy - r), (cx + r * 0.6, cy - r * 0.2), (cx, cy + r), (cx - r * 0.6, cy - r * 0.2)], **style)
    elif category == "moon":  # a crescent: an outer arc and an inner one
        outer = [(cx + r * _cos(a), cy + r * _sin(a)) for a in range(60, 301, 20)]
        inner = [(cx - r * 0.1 + r * 0.7 * _cos(a), cy + r * 0.8 * _sin(a)) for a in range(300, 59, -20)]
        draw.polygon(outer + inner, **style)
    elif category == "heart":
        draw.polygon(
            [
                (cx, cy + r),
                (cx - r, cy - r * 0.1),
                (cx - r * 0.7, cy - r * 0.8),
                (cx, cy - r * 0.4),
                (cx + r * 0.7, cy - r * 0.8),
                (cx + r, cy - r * 0.1),
            ],
            **style,
        )
    elif category == "bolt":
        draw.polygon(
            [
                (cx + r * 0.3, cy - r),
                (cx - r * 0.6, cy + r * 0.1),
                (cx - r * 0.05, cy + r * 0.1),
                (cx - r * 0.3, cy + r),
                (cx + r * 0.6, cy - r * 0.15),
                (cx + r * 0.05, cy - r * 0.15),
            ],
            **style,
        )
    elif category == "leaf":
        draw.ellipse((cx - r, cy - r * 0.45, cx + r * 0.7, cy + r * 0.45), **style)
        draw.line((cx + r * 0.6, cy, cx + r, cy + r * 0.3), fill=fill, width=max(1, round(r * 0.2)))
    elif category == "bell":
        draw.polygon(
            [
                (cx - r * 0.4, cy - r * 0.8),
                (cx + r * 0.4, cy - r * 0.8),
                (cx + r, cy + r * 0.5),
                (cx - r, cy + r * 0.5),
            ],
            **style,
        )
        draw.ellipse((cx - r * 0.25, cy + r * 0.5, cx + r * 0.25, cy + r), fill=fill)
    elif category == "house":
        draw.rectangle((cx - r * 0.7, cy - r * 0.1, cx + r * 0.7, cy + r), **style)
        draw.polygon([(cx - r, cy - r * 0.1), (cx, cy - r), (cx + r, cy - r * 0.1)], **style)
    elif category == "boat":
        draw.polygon(
            [(cx - r, cy + r * 0.3), (cx + r, cy + r * 0.3), (cx + r * 0.6, cy + r), (cx - r * 0.6, cy + r)], **style
        )
        draw.polygon([(cx - r * 0.1, cy - r), (cx - r * 0.1, cy + r * 0.2), (cx + r * 0.7, cy + r * 0.2)], **style)
    else:
        raise ValueError(f"unknown icon {category!r}; icons are {', '.join(CATEGORIES)}")


def _cos(degrees: float) -> float:
    return math.cos(math.radians(degrees))


def _sin(degrees: float) -> float:
    return math.sin(math.radians(degrees))


def affirmative_captions(scene: Scene, rng: random.Random, n: int = 5) -> list[str]:
    """``n`` different affirmative captions in this world's frames; every other one leaves colours out."""
    templates = list(AFFIRMATIVE_TEMPLATES)
    rng.shuffle(templates)
    captions = []
    for i, template in enumerate(templates[:n]):
        objects = list(scene.objects)
        rng.shuffle(objects)
        phrases = [o.category if i % 2 else o.phrase for o in objects]
        captions.append(template.format(list=join_list(phrases)))
    return captions


def _affirm(template: str, objects: list[str]) -> str:
    text = join_list(objects)
    return template.format(list=text, List=text[0].upper() + text[1:])


def _negated(phrasing: Phrasing, rng: random.Random, obj: str, affirmed: list[str] | None = None) -> str:
    """``obj`` negated in ``phrasing``: alone, or after the caption of ``affirmed`` objects."""
    if affirmed:
        text = rng.choice(phrasing.hybrid).format(c=join_list(affirmed), **fields(obj))
    else:
        text = rng.choice(phrasing.only).format(**fields(obj))
    return text[0].upper() + text[1:] + "."


def mcq_items(scene: Scene, rng: random.Random) -> list[McqItem]:
    """One item per template type (hybrid needs two objects). Distractor shapes differ from ``shapes``': affirmation
    questions include a false negation of a present object (as NegBench's "... no A"), negation questions a caption affirming the absent object
    next to a present one, hybrid questions the bag-of-words caption naming the same objects with no cue at all."""
    present, absent = list(scene.categories), list(scene.absent)
    rng.shuffle(present)
    rng.shuffle(absent)
    items = []

    template = rng.choice(MCQ_AFFIRMATION)
    phrasing = rng.choice(PHRASINGS)
    items.append(
        shuffle_item(
            _affirm(template, present),
            [
                _affirm(template, present[:-1] + [absent[0]]),
                _affirm(template, absent[1:3]),
                _negated(phrasing, rng, present[0]),  # a false negation: present[0] is there
            ],
            "positive",
            rng,
        )
    )

    phrasing = rng.choice(PHRASINGS)
    items.append(
        shuffle_item(
            _negated(phrasing, rng, absent[0]),
            [
                _negated(phrasing, rng, present[0]),
                _affirm(rng.choice(MCQ_AFFIRMATION), [absent[0]]),
                _affirm(rng.choice(MCQ_AFFIRMATION), [present[0], absent[0]]),
            ],
            "negative",
            rng,
            phrasing,
        )
    )

    if len(present) > 1:
        phrasing = rng.choice(PHRASINGS)
        affirmed = present[1:]
        items.append(
            shuffle_item(
                _negated(phrasing, rng, absent[0], affirmed),
                [
                    _negated(phrasing, rng, present[0], affirmed),  # negates an object that is there
                    _affirm(rng.choice(MCQ_AFFIRMATION), affirmed + [absent[0]]),  # same objects, no cue: false
                    _negated(phrasing, rng, present[0], [absent[1]]),  # present and absent swapped
                ],
                "hybrid",
                rng,
                phrasing,
            )
        )
    return items
