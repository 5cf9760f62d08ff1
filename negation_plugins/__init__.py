"""negation-plugins: CLIP text encoders that understand "no", delivered into the tools people use."""

from .factory import Backend, ClipBundle, load_clip
from .hookspecs import hookimpl
from .integration import Integration, apply
from .plugins import get, get_one, pm, registered

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "ClipBundle",
    "Integration",
    "apply",
    "get",
    "get_one",
    "hookimpl",
    "load_clip",
    "pm",
    "registered",
]
