"""The worlds, by name: what each renders, names, captions and asks, and which web negations its base model saw.

``shapes`` is the project's world (the demo, the recipes, the e2e tests: settings are chosen on it). ``icons``
differs in everything a recipe could latch onto (see :mod:`negation_plugins.world.icons`) and is for REPORTING
ONLY: figures on it say whether what was chosen on ``shapes`` transfers. Each world's pretrained base model ships
with the package under its name (:mod:`negation_plugins.world.shipped`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from ..phrasings import Phrasing, families
from . import captions, icons, scenes


@dataclass(frozen=True)
class WorldKind:
    name: str
    description: str
    layout: scenes.Layout
    render: Callable[[scenes.Scene, int], Image.Image]
    affirmative_captions: Callable[[scenes.Scene, random.Random], list[str]]
    mcq_items: Callable[[scenes.Scene, random.Random], list[captions.McqItem]]
    web_phrasings: tuple[Phrasing, ...]  # the families its base model's rare web negations are phrased in
    supercategory: str  # COCO instances' supercategory of its objects


WORLDS: dict[str, WorldKind] = {
    kind.name: kind
    for kind in (
        WorldKind(
            "shapes",
            "coloured shapes on a dark plain background; the project's world, where settings are chosen",
            scenes.SHAPES,
            scenes.render,
            captions.affirmative_captions,
            captions.mcq_items,
            families(in_world=True),
            "shape",
        ),
        WorldKind(
            "icons",
            "everyday icons on patterned backgrounds, own words, grammar and negation cues; for reporting only",
            icons.LAYOUT,
            icons.render,
            icons.affirmative_captions,
            icons.mcq_items,
            (*families(in_world=True), *icons.PHRASINGS),
            "icon",
        ),
    )
}
DEFAULT_WORLD = "shapes"


def world_kind(name: str) -> WorldKind:
    """The world called ``name``; a one-line error naming the known worlds otherwise."""
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; worlds are {', '.join(WORLDS)}")
    return WORLDS[name]
