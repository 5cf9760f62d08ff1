"""Integrations: put a negation-aware text encoder into a downstream object, through one door, :func:`apply`.

The built-ins (diffusers SD/SDXL pipelines, CLIPSeg) live in the top-level ``integrations`` package and register
through the ``register_integrations`` hook like any third-party plugin; this module does not import them.
"""

from __future__ import annotations

from . import plugins


class Integration:
    """An integration plugin, registered as an instance. Subclasses set ``name`` (and ``description``) and implement
    :meth:`matches` and :meth:`apply`."""

    name: str = ""
    description: str = ""

    def matches(self, target) -> bool:
        """Whether this integration handles ``target`` (checked by type and shape, without loading anything)."""
        raise NotImplementedError

    def apply(self, target, source, **options):
        """Put ``source``'s text encoder into ``target`` in place and return ``target``."""
        raise NotImplementedError


def apply(target, source, **options):
    """Put the negation-aware text encoder from ``source`` into ``target`` (in place) and return ``target``.

    The integration is picked by the target's type among the registered integration plugins; ``source`` is
    anything :func:`~negation_plugins.load_clip` takes, or an already loaded :class:`~negation_plugins.ClipBundle`.
    """
    integrations = plugins.get("integrations")
    for integration in integrations.values():
        if integration.matches(target):
            return integration.apply(target, source, **options)
    raise TypeError(
        f"no integration handles a {type(target).__module__}.{type(target).__name__}; "
        f"registered integrations: {', '.join(integrations) or '(none)'}"
    )
