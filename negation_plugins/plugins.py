"""The plugin host: a pluggy manager with built-in default plugins plus entry-point plugins.

``NEGATION_PLUGINS`` restricts which external (entry-point) plugins load: a comma-separated list of
entry-point names, or an empty string for none. Built-ins always load.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "negation_plugins"
ALLOW_ENV = "NEGATION_PLUGINS"

DEFAULT_PLUGINS = (
    "negation_plugins.backends.open_clip_backend",
    "negation_plugins.backends.openai_state_dict",
    "negation_plugins.backends.transformers_folder",
    "negation_plugins.world.commands",
    "negation_plugins.benchmarks.mcq",
    "negation_plugins.benchmarks.suite",
    "negation_plugins.data.negators",
    "negation_plugins.data.llm",
    "negation_plugins.data.verifiers",
    "negation_plugins.data.commands",
    "negation_plugins.losses",
    "negation_plugins.corrections",
    "negation_plugins.hub",
    "negation_plugins.commands",
    "negation_plugins.app.commands",
    "trainers.commands",
    "integrations.diffusers_sd",
    "integrations.diffusers_sdxl",
    "integrations.clipseg",
    "integrations.neg_t2i",
)


@dataclass(frozen=True)
class Contract:
    """What one kind registers (see :mod:`negation_plugins.hookspecs`): a ``"class"`` the host builds with options or
    an ``"instance"`` used as is, the methods the host calls and the other attributes it reads (besides ``name``)."""

    registers: str
    methods: tuple[str, ...]
    attributes: tuple[str, ...] = ()


CONTRACTS = {
    "backends": Contract("instance", ("can_load", "load")),
    "negators": Contract("class", ("prepare", "propose", "rewrite")),
    "verifiers": Contract("class", ("set_vocabulary", "absent")),
    "objectives": Contract("class", ("forward",), ("requires",)),
    "corrections": Contract("class", ("correct",)),
    "benchmarks": Contract("instance", ("run",)),
    "integrations": Contract("instance", ("matches", "apply")),
}
KINDS = tuple(CONTRACTS)


class PluginError(TypeError):
    """A plugin registered something that breaks its kind's contract."""


pm = pluggy.PluginManager("negation_plugins")
pm.add_hookspecs(hookspecs)


_loaded = False


def load_plugins() -> None:
    """Register built-ins, then entry-point plugins. Lazy (first use) so plugin modules may import the core."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    _load_default_plugins()
    _load_entry_points()


def _load_entry_points() -> None:
    allowed = os.environ.get(ALLOW_ENV)
    allowed_names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if allowed_names is not None and ep.name not in allowed_names:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        pm.register(ep.load(), name=ep.name)


def _load_default_plugins() -> None:
    for module_name in DEFAULT_PLUGINS:
        if pm.get_plugin(module_name) is None:
            pm.register(importlib.import_module(module_name), name=module_name)


def check_contract(kind: str, obj: Any, plugin: str) -> str:
    """``obj``'s name if it keeps the contract of ``kind``; else a one-line :class:`PluginError` naming the plugin."""
    contract, what = CONTRACTS[kind], kind[:-1]
    label = obj.__name__ if isinstance(obj, type) else f"a {type(obj).__name__} instance"
    if contract.registers == "class" and not isinstance(obj, type):
        raise PluginError(
            f"plugin {plugin!r} registered {label} as a {what}; {kind} are registered as classes "
            f"(built with the user's options): register({type(obj).__name__})"
        )
    if contract.registers == "instance" and isinstance(obj, type):
        raise PluginError(
            f"plugin {plugin!r} registered the class {label} as a {what}; {kind} are registered as instances: "
            f"register({label}())"
        )
    name = getattr(obj, "name", None)
    if not name or not isinstance(name, str):
        raise PluginError(f"plugin {plugin!r} registered {label} as a {what} without a 'name'")
    missing = [m for m in contract.methods if not callable(getattr(obj, m, None))]
    missing += [a for a in contract.attributes if not hasattr(obj, a)]
    if missing:
        raise PluginError(f"plugin {plugin!r} registered {what} {name!r} ({label}) without {', '.join(missing)}")
    return name


@dataclass(frozen=True)
class Registered:
    """A registered extension and the plugin that registered it."""

    kind: str
    name: str
    plugin: str
    obj: Any


def registered(kind: str) -> list[Registered]:
    """Everything of one kind, in registration order (built-ins first), with its plugin's name.

    A later plugin that reuses a name replaces the earlier entry, so third parties can override built-ins.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; kinds are: {', '.join(KINDS)}")
    load_plugins()
    hook = getattr(pm.hook, f"register_{kind}")
    found: dict[str, Registered] = {}
    # get_hookimpls() lists plugins oldest first (pluggy calls them newest first): built-ins first, later ones override.
    for impl in hook.get_hookimpls():
        plugin_name = impl.plugin_name

        def register(obj, _plugin=plugin_name):
            name = check_contract(kind, obj, _plugin)
            found.pop(name, None)
            found[name] = Registered(kind, name, _plugin, obj)

        impl.function(register=register)
    return list(found.values())


def get(kind: str) -> dict[str, Any]:
    """``{name: object}`` for one kind."""
    return {r.name: r.obj for r in registered(kind)}


def get_one(kind: str, name: str) -> Any:
    """One registered object by name, or a clear error listing what exists."""
    items = get(kind)
    if name not in items:
        raise KeyError(f"no {kind[:-1]} named {name!r}; registered {kind}: {', '.join(items) or '(none)'}")
    return items[name]
