"""Peak memory of retrieval scoring: ``retrieval_recalls`` in blocks (the default) vs one block of every score.

    .venv/bin/python perf/bench_retrieval_memory.py [--images 4000] [--captions 20000] [--dim 64]

Each mode runs in a fresh process on random normalized embeddings; the figure is the growth of peak resident memory
while scoring (both directions), next to the size of the full images x captions score matrix. Prints one line per
mode and the ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(images: int, captions: int, dim: int, block_elements: int) -> dict:
    import torch

    from negation_plugins.benchmarks.common import retrieval_recalls

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    image_embs = torch.nn.functional.normalize(torch.randn(images, dim, generator=generator), dim=-1)
    text_embs = torch.nn.functional.normalize(torch.randn(captions, dim, generator=generator), dim=-1)
    owners = torch.arange(captions) % images
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    recalls = retrieval_recalls(image_embs, text_embs, owners, block_elements=block_elements)
    seconds = time.perf_counter() - start
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB on Linux
    return {"peak_growth_mb": round(grown / 1024, 1), "seconds": round(seconds, 2), "i2t_R@10": recalls["i2t_R@10"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--captions", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--block-elements", type=int, default=None, help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args()
    if args.block_elements is not None:
        print(json.dumps(measure(args.images, args.captions, args.dim, args.block_elements)))
        return

    full_matrix_mb = args.images * args.captions * 4 / 2**20
    print(f"{args.images} images x {args.captions} captions, dim {args.dim}: score matrix {full_matrix_mb:.0f} MB")
    results = {}
    for mode, block in (("blocks (default, 1M scores)", 1 << 20), ("one block (all scores at once)", 1 << 62)):
        child = [sys.executable, __file__, *sys.argv[1:], "--block-elements", str(block)]
        results[mode] = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
        print(f"{mode}: peak memory +{results[mode]['peak_growth_mb']} MB, {results[mode]['seconds']} s")
    blocked, whole = results.values()
    assert blocked["i2t_R@10"] == whole["i2t_R@10"], "blocked and whole scoring disagree"
    print(f"peak memory blocks / one block: {blocked['peak_growth_mb'] / max(whole['peak_growth_mb'], 1e-9):.3f}")


if __name__ == "__main__":
    main()
