"""negation-plugins: CLIP text encoders that understand "no", delivered into the tools people use."""

from .factory import Backend, ClipBundle, load_clip
from .hookspecs import hookimpl
from .plugins import get, get_one, pm, registered

__version__ = "0.1.0"

__all__ = ["Backend", "ClipBundle", "apply", "get", "get_one", "hookimpl", "load_clip", "pm", "registered"]


def apply(target, source, **options):
    """Put the negation-aware text encoder from ``source`` into ``target`` (in place) and return ``target``.

    The integration is picked by the target's type among the registered integration plugins; ``source`` is
    anything :func:`load_clip` takes, or an already loaded :class:`ClipBundle`.
    """
    integrations = get("integrations")
    for integration in integrations.values():
        if integration.matches(target):
            return integration.apply(target, source, **options)
    raise TypeError(
        f"no integration handles a {type(target).__module__}.{type(target).__name__}; "
        f"registered integrations: {', '.join(integrations) or '(none)'}"
    )
