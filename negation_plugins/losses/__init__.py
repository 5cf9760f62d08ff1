"""Training objectives as plugins: small loss modules over a dict of normalized embeddings.

Built-ins: ``clip``, ``infonce`` (NegationCLIP), ``tng`` (TNG-CLIP), ``omni`` (Omni-NegCLIP), ``conclip``
(CoN-CLIP), ``negbench-mcq`` (NegBench). Third parties add more through the ``register_objectives`` hook by
registering an :class:`Objective` subclass (called with keyword options to build an instance); one that needs a
batch key no built-in makes declares it beside its loss (``batch_keys = (BatchKey(...),)``, see :mod:`.batch`).
"""

from ..hookspecs import hookimpl
from .base import Objective, clip_symmetric
from .batch import CHOICES, IMAGE, TEXT, BatchKey, Draw, Example
from .clip import ClipObjective, InfoNCEObjective
from .combine import CombinedObjective, build_objective, parse_objectives, parse_spec
from .conclip import ConCLIPObjective
from .negbench import NegBenchMCQObjective
from .omni import OmniObjective
from .tng import TNGObjective

BUILTIN_OBJECTIVES = (
    InfoNCEObjective,
    TNGObjective,
    OmniObjective,
    ConCLIPObjective,
    NegBenchMCQObjective,
    ClipObjective,
)

__all__ = [
    "CHOICES",
    "IMAGE",
    "TEXT",
    "BatchKey",
    "Draw",
    "Example",
    "ClipObjective",
    "CombinedObjective",
    "ConCLIPObjective",
    "InfoNCEObjective",
    "NegBenchMCQObjective",
    "Objective",
    "OmniObjective",
    "TNGObjective",
    "build_objective",
    "clip_symmetric",
    "parse_objectives",
    "parse_spec",
]


@hookimpl
def register_objectives(register):
    for objective_class in BUILTIN_OBJECTIVES:
        register(objective_class)
