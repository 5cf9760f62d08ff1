"""Benchmarks: each scores a loaded CLIP (:class:`negation_plugins.ClipBundle`) and returns metrics."""

from __future__ import annotations

from ..factory import ClipBundle


class Benchmark:
    """A benchmark plugin. Subclasses set ``name``/``description`` and implement :meth:`run`.

    ``run`` takes the model and benchmark-specific options (data paths, flags) and returns a flat-ish dict of
    metrics (floats in [0, 1] for accuracies/recalls) plus counts such as ``n_items``/``n_skipped``.
    """

    name: str = ""
    description: str = ""

    def run(self, clip: ClipBundle, **options) -> dict:
        raise NotImplementedError
