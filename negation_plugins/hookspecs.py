"""Every extension point of negation-plugins, with what each one registers.

Each ``register_*`` hook receives a ``register`` callable; a plugin calls it once per thing it adds. Every
registered thing has a non-empty ``name`` (a later plugin reusing a name replaces the earlier one) and may have a
one-line ``description`` (``negclip plugins`` shows it).

Class or instance, one rule: a kind whose options build a worker that holds state (a negator's LLM client, a
verifier's detector, an objective's parameters) registers a **class**, which the host calls with the user's keyword
options; a kind that is asked in turn and given its options per call registers an **instance**. The host checks
both and the required attributes at registration (:data:`negation_plugins.plugins.CONTRACTS`) and names the plugin
that broke them. Third-party plugins live in the entry-point group ``negation_plugins``.
"""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("negation_plugins")
hookimpl = HookimplMarker("negation_plugins")


@hookspec
def register_backends(register):
    """Add CLIP formats. Registers instances of :class:`negation_plugins.Backend` with ``name``,
    ``can_load(spec) -> bool`` and ``load(spec, *, device, **options) -> ClipBundle``; ``load_clip`` asks each in turn.
    """


@hookspec
def register_negators(register):
    """Add negators. Registers classes (subclasses of :class:`negation_plugins.data.negators.Negator`), built with
    ``--negator-option`` values, with ``name``, ``prepare(items, vocabulary)``, ``propose(items, vocabulary, rng)``
    and ``rewrite(items, objects, kind, rng)``; an instance keeps a ``stats`` Counter.
    """


@hookspec
def register_verifiers(register):
    """Add absence verifiers. Registers classes (subclasses of :class:`negation_plugins.data.verifiers.Verifier`),
    built with ``images=`` and ``--verifier-option`` values, with ``name``, ``set_vocabulary(vocabulary)`` and
    ``absent(items, objects) -> list[bool]``; an instance keeps a ``stats`` Counter.
    """


@hookspec
def register_objectives(register):
    """Add training objectives (``--objective NAME[:weight]``). Registers classes (subclasses of
    :class:`negation_plugins.losses.Objective`, a ``torch.nn.Module``), built with keyword options, with ``name``,
    ``requires`` (the batch keys it reads) and ``forward(batch) -> loss``.
    """


@hookspec
def register_corrections(register):
    """Add training-free text-embedding corrections (``load_clip(spec, correction=...)``, ``--correction``).
    Registers classes (subclasses of :class:`negation_plugins.corrections.Correction`), built from a spec
    ``NAME[:ARG][:key=value]`` as ``cls(*args, **options)``, with ``name`` and
    ``correct(clip, texts, unit_embeddings) -> unit_embeddings``.
    """


@hookspec
def register_benchmarks(register):
    """Add benchmarks. Registers instances of :class:`negation_plugins.benchmarks.Benchmark` with ``name`` and
    ``run(clip, **options) -> dict`` of metrics.
    """


@hookspec
def register_integrations(register):
    """Put a text encoder into a downstream object (a diffusers pipeline, CLIPSeg, ...). Registers instances of
    :class:`negation_plugins.Integration` with ``name``, ``matches(target) -> bool`` and
    ``apply(target, source, **options) -> target``; ``negation_plugins.apply`` uses the first that matches.
    """


@hookspec
def register_commands(cli):
    """Add subcommands to the ``negclip`` click group (``cli.command(...)`` / ``cli.add_command``)."""
