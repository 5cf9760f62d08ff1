"""NegBench negated retrieval: text->image Recall@1/5/10 over a retrieval CSV (``filepath``, ``captions``).

``captions`` holds a Python-literal list of strings (parsed with ``ast.literal_eval``, never ``eval``); every
caption of a row should retrieve that row's image among all the file's images.
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path

from ..textfiles import open_text
from . import Benchmark
from .common import BenchmarkDataError, RowProblems, encoder_for, resolve_image, retrieval_of_groups


def read_retrieval_csv(path, images=None, skip_bad=False):
    """``[(image_path, [captions])]`` plus the problems collector (row numbers count the header as row 1)."""
    path = Path(path)
    problems = RowProblems(path, skip_bad)
    with open_text(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"filepath", "captions"} - set(reader.fieldnames or ())
        if missing:
            raise BenchmarkDataError(f"{path}: missing column(s) {', '.join(sorted(missing))}; has {reader.fieldnames}")
        rows = []
        for row_number, row in enumerate(reader, start=2):
            try:
                captions = ast.literal_eval(row["captions"] or "")
            except (ValueError, SyntaxError) as err:
                problems.bad(
                    row_number,
                    f"'captions' is not a Python list literal ({err.__class__.__name__}): {row['captions']!r:.80}",
                )
                continue
            if isinstance(captions, str):
                captions = [captions]
            if (
                not isinstance(captions, (list, tuple))
                or not captions
                or not all(isinstance(c, str) and c.strip() for c in captions)
            ):
                problems.bad(
                    row_number, f"'captions' must be a non-empty list of non-empty strings, got {captions!r:.80}"
                )
                continue
            image, why = resolve_image(row["filepath"], images, path.parent)
            if image is None:
                problems.bad(row_number, why)
                continue
            rows.append((image, list(captions)))
    return rows, problems


class NegBenchRetrieval(Benchmark):
    name = "negbench-retrieval"
    description = "NegBench (negated) retrieval CSV: text->image Recall@1/5/10"

    def run(self, clip, *, csv, images=None, ks=(1, 5, 10), skip_bad=False, encoder=None, batch_size=64, progress=True):
        rows, problems = read_retrieval_csv(csv, images, skip_bad)
        if not rows:
            raise BenchmarkDataError(f"{csv}: no scorable rows ({problems.summary()['n_skipped']} skipped)")
        enc = encoder_for(clip, encoder, batch_size, progress)
        return {**retrieval_of_groups(enc, rows, ks, directions=("t2i",)), **problems.summary()}
