"""Every extension point of negation-plugins.

Each ``register_*`` hook receives a ``register`` callable; a plugin calls it once per thing it adds.
Every registered object has a unique ``name`` attribute. Third-party plugins live in the entry-point
group ``negation_plugins`` (see :mod:`negation_plugins.plugins`).
"""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("negation_plugins")
hookimpl = HookimplMarker("negation_plugins")


@hookspec
def register_backends(register):
    """Add CLIP formats: a :class:`negation_plugins.factory.Backend` that loads (and may save) a CLIP."""


@hookspec
def register_negators(register):
    """Add negators: turn a caption (+ objects) into negated captions (``negation_plugins.data.negators``)."""


@hookspec
def register_verifiers(register):
    """Add absence verifiers: decide whether an object is really absent from an image."""


@hookspec
def register_objectives(register):
    """Add training objectives: loss modules the trainer can combine (``--objective NAME[:weight]``)."""


@hookspec
def register_corrections(register):
    """Add training-free text-embedding corrections: :class:`negation_plugins.corrections.Correction` subclasses
    (register the class; ``cls(*args, **options)`` from a spec ``NAME[:ARG][:key=value]`` makes one)."""


@hookspec
def register_benchmarks(register):
    """Add benchmarks: score any loaded CLIP and return a dict of metrics."""


@hookspec
def register_integrations(register):
    """Add integrations: put a text encoder into a downstream object (a diffusers pipeline, CLIPSeg, ...)."""


@hookspec
def register_commands(cli):
    """Add subcommands to the ``negclip`` click group."""
