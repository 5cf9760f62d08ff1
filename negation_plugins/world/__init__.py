"""The synthetic negation world: rendered scenes with known objects, exported as COCO + NegBench files."""

from .export import WorldConfig, WorldFiles, make_world
from .scenes import CATEGORIES, COLOURS, Scene, generate_scenes, render

__all__ = ["CATEGORIES", "COLOURS", "Scene", "WorldConfig", "WorldFiles", "generate_scenes", "make_world", "render"]
