"""Weighted sums of objectives, built from ``name[:weight]`` strings (the trainer's ``--objective``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import plugins
from .base import Objective
from .batch import BatchKey, resolve_keys


def parse_spec(spec: str) -> tuple[str, float]:
    """``"omni"`` -> ("omni", 1.0); ``"clip:0.5"`` -> ("clip", 0.5). Weights must be finite and > 0."""
    name, sep, weight_text = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"objective spec {spec!r} has no name; expected NAME or NAME:WEIGHT")
    if not sep:
        return name, 1.0
    try:
        weight = float(weight_text)
    except ValueError:
        raise ValueError(f"objective spec {spec!r}: weight {weight_text!r} is not a number") from None
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"objective spec {spec!r}: weight must be a finite number > 0, got {weight_text!r}")
    return name, weight


def build_objective(spec: str, **options) -> tuple[Objective, float]:
    """Instantiate a registered objective from ``name[:weight]``; ``options`` go to its constructor."""
    name, weight = parse_spec(spec)
    available = plugins.get("objectives")
    if name not in available:
        raise ValueError(f"unknown objective {name!r}; registered objectives: {', '.join(available) or '(none)'}")
    factory = available[name]
    try:
        objective = factory(**options)
    except TypeError as error:
        raise ValueError(f"objective {name!r} does not take options {sorted(options)}: {error}") from None
    return objective, weight


class CombinedObjective(nn.Module):
    """``sum_k weight_k · objective_k(batch)``. ``forward`` returns ``(total, parts)``; ``parts`` maps each
    objective's name to its detached, unweighted value, for logging."""

    def __init__(self, weighted: list[tuple[Objective, float]]):
        super().__init__()
        if not weighted:
            raise ValueError("at least one objective is needed")
        names = [objective.name for objective, _ in weighted]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"objective(s) given more than once: {duplicates}; give each once with its weight")
        self.objectives = nn.ModuleList(objective for objective, _ in weighted)
        self.weights = [weight for _, weight in weighted]

    @property
    def requires(self) -> tuple[str, ...]:
        """Union of the parts' batch keys, in first-seen order."""
        return tuple(dict.fromkeys(key for objective in self.objectives for key in objective.requires))

    @property
    def batch_keys(self) -> list[BatchKey]:
        """The keys a batch must hold for these objectives, from their declarations, in draw order."""
        return resolve_keys(self.requires, [key for objective in self.objectives for key in objective.batch_keys])

    @property
    def name(self) -> str:
        return "+".join(f"{o.name}:{w:g}" for o, w in zip(self.objectives, self.weights))

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = 0.0
        parts = {}
        for objective, weight in zip(self.objectives, self.weights):
            value = objective(batch)
            parts[objective.name] = value.detach()
            total = total + weight * value
        return total, parts


def parse_objectives(specs, options: dict[str, dict] | None = None) -> CombinedObjective:
    """``parse_objectives(["omni", "clip:0.5"])``; ``options`` maps an objective name to constructor kwargs."""
    if isinstance(specs, str):
        specs = [specs]
    options = options or {}
    weighted = [build_objective(spec, **options.get(parse_spec(spec)[0], {})) for spec in specs]
    unused = set(options) - {objective.name for objective, _ in weighted}
    if unused:
        raise ValueError(f"options given for objective(s) not in use: {sorted(unused)}")
    return CombinedObjective(weighted)
