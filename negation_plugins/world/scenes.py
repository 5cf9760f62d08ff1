"""Procedural scenes: small rendered images whose object list is known exactly (the ground truth of "is X absent?").

Each scene holds 1-3 objects of distinct categories (shapes a tiny vision tower can tell apart), each with a colour,
placed in distinct cells of a 2x2 grid with a little jitter. Everything is drawn from ``random.Random(seed)``, so a
seed fully determines the world. A :class:`Layout` names a world's objects, colours and placement (the ``shapes``
world's is :data:`SHAPES`; others live in :mod:`negation_plugins.world.kinds`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

CATEGORIES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "arrow")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
}
BACKGROUND = (40, 40, 40)
MAX_OBJECTS = 3


@dataclass(frozen=True)
class Layout:
    """What a world's scenes are made of: object names, colour names, and how far objects stray from their cell's
    centre (``jitter``, a fraction of the cell) at which size (``scale``, a fraction of the cell)."""

    categories: tuple[str, ...]
    colours: tuple[str, ...]
    jitter: float = 0.12
    scale: tuple[float, float] = (0.62, 0.78)


SHAPES = Layout(CATEGORIES, tuple(COLOURS))


@dataclass(frozen=True)
class SceneObject:
    category: str
    colour: str
    cell: int  # 0..3, row-major in the 2x2 grid
    jitter: tuple[float, float]  # centre offset, as a fraction of the cell size
    scale: float  # object size as a fraction of the cell size

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.category}"


@dataclass(frozen=True)
class Scene:
    id: int
    objects: tuple[SceneObject, ...]
    noise_seed: int
    vocabulary: tuple[str, ...] = CATEGORIES  # every category of the scene's world

    @property
    def categories(self) -> list[str]:
        return [o.category for o in self.objects]

    @property
    def absent(self) -> list[str]:
        return [c for c in self.vocabulary if c not in self.categories]

    def content_key(self) -> frozenset:
        """What a caption can say about the scene: the set of (colour, category)."""
        return frozenset((o.colour, o.category) for o in self.objects)


def generate_scenes(n: int, seed: int, *, first_id: int = 1, layout: Layout = SHAPES) -> list[Scene]:
    """``n`` scenes with pairwise different content (so retrieval has one right answer); deterministic in ``seed``."""
    capacity = _content_capacity(layout)
    if n > capacity:
        raise ValueError(f"a world holds at most {capacity} scenes with distinct content; asked for {n}")
    rng = random.Random(seed)
    scenes, seen = [], set()
    while len(scenes) < n:
        n_objects = rng.choices((1, 2, 3), weights=(1, 3, 3))[0]
        categories = rng.sample(layout.categories, n_objects)
        cells = rng.sample(range(4), n_objects)
        objects = tuple(
            SceneObject(
                category=category,
                colour=rng.choice(layout.colours),
                cell=cell,
                jitter=(rng.uniform(-layout.jitter, layout.jitter), rng.uniform(-layout.jitter, layout.jitter)),
                scale=rng.uniform(*layout.scale),
            )
            for category, cell in zip(categories, cells)
        )
        scene = Scene(first_id + len(scenes), objects, rng.getrandbits(32), layout.categories)
        if scene.content_key() in seen:
            continue
        seen.add(scene.content_key())
        scenes.append(scene)
    return scenes


def _content_capacity(layout: Layout) -> int:
    k, c = len(layout.categories), len(layout.colours)
    return sum(math.comb(k, m) * c**m for m in range(1, MAX_OBJECTS + 1))


def render(scene: Scene, image_size: int = 32) -> Image.Image:
    """Draw the scene (RGB, ``image_size`` square) with light per-pixel background noise."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    noise_rng = random.Random(scene.noise_seed)
    pixels = image.load()
    for y in range(image_size):
        for x in range(image_size):
            d = noise_rng.randint(-8, 8)
            pixels[x, y] = tuple(v + d for v in BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy, r = centre(obj, image_size)
        _draw_shape(draw, obj.category, cx, cy, r, COLOURS[obj.colour])
    return image


def _regular_polygon(cx, cy, r, n, rotation=-math.pi / 2, inner=None):
    points = []
    steps = n * 2 if inner else n
    for i in range(steps):
        radius = (inner if inner and i % 2 else 1.0) * r
        angle = rotation + 2 * math.pi * i / steps
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _draw_shape(draw: ImageDraw.ImageDraw, category: str, cx: float, cy: float, r: float, colour) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    thick = max(1.0, r * 0.38)
    if category == "circle":
        draw.ellipse(box, fill=colour)
    elif category == "square":
        s = r * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=colour)
    elif category == "triangle":
        draw.polygon(_regular_polygon(cx, cy + r * 0.15, r * 1.1, 3), fill=colour)
    elif category == "star":
        draw.polygon(_regular_polygon(cx, cy, r * 1.1, 5, inner=0.42), fill=colour)
    elif category == "cross":
        draw.rectangle((cx - r, cy - thick / 2, cx + r, cy + thick / 2), fill=colour)
        draw.rectangle((cx - thick / 2, cy - r, cx + thick / 2, cy + r), fill=colour)
    elif category == "ring":
        draw.ellipse(box, outline=colour, width=max(1, round(r * 0.35)))
    elif category == "diamond":
        draw.polygon(_regular_polygon(cx, cy, r * 1.05, 4), fill=colour)
    elif category == "arrow":
        shaft = thick / 2
        draw.rectangle((cx - r, cy - shaft, cx + r * 0.1, cy + shaft), fill=colour)
        draw.polygon([(cx + r * 0.05, cy - r * 0.8), (cx + r, cy), (cx + r * 0.05, cy + r * 0.8)], fill=colour)
    else:
        raise ValueError(f"unknown category {category!r}; categories are {', '.join(CATEGORIES)}")


def centre(obj: SceneObject, image_size: int) -> tuple[float, float, float]:
    """``(cx, cy, r)``: an object's centre in pixels and its drawing radius."""
    cell = image_size / 2
    row, col = divmod(obj.cell, 2)
    return (col + 0.5 + obj.jitter[0]) * cell, (row + 0.5 + obj.jitter[1]) * cell, obj.scale * cell / 2


def bbox(obj: SceneObject, image_size: int) -> list[float]:
    """COCO [x, y, w, h] of an object's drawing box, clipped to the image."""
    cx, cy, r = centre(obj, image_size)
    r *= 1.1
    x0, y0 = max(0.0, cx - r), max(0.0, cy - r)
    x1, y1 = min(float(image_size), cx + r), min(float(image_size), cy + r)
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]
