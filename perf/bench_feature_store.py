"""Feature store at scale: does a process's memory stay flat as the store grows?

For each store size it writes N synthetic rows (identities like a webdataset's "shard#key"), then, in a fresh process,
opens the store and looks up Q random identities, reporting the wall time of each step and the process's private
(anonymous) resident memory after the look-up: memory-mapped parts are file pages the OS can drop and share, so
RssAnon is what the store's index costs a process. Prints one JSON object; --json also writes it to a file.

    python perf/bench_feature_store.py --sizes 100000,1000000 --dim 64 --queries 100000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LOOKUP = """
import json, sys, time
import numpy as np
from trainers.features import FeatureStore

def anon_mib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024

root, n, queries = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
before = anon_mib()
picked = np.random.default_rng(0).integers(0, n, queries)
identities = [f"shards/{i // 10000:05d}.tar#{i:09d}" for i in picked]
started = time.perf_counter()
store = FeatureStore(root, "bench")
assert not store.missing(identities[:1000])
opened = time.perf_counter()
rows = store.get(identities)
done = time.perf_counter()
print(json.dumps({"open_and_check_s": round(opened - started, 2), "lookup_s": round(done - opened, 2),
                  "rss_anon_mib_before": round(before, 1), "rss_anon_mib_after": round(anon_mib(), 1),
                  "rows_returned_mib": round(rows.numel() * 2 / 2**20, 1)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=100000)
    parser.add_argument("--json", default=None, help="Also write the result here.")
    args = parser.parse_args()

    import torch

    from trainers.features import FeatureStore

    result = {"dim": args.dim, "queries": args.queries, "sizes": {}}
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as root:
            store = FeatureStore(root, "bench")
            started = time.perf_counter()
            for start in range(0, n, 500_000):  # as processes write their shards
                stop = min(n, start + 500_000)
                identities = [f"shards/{i // 10000:05d}.tar#{i:09d}" for i in range(start, stop)]
                store.write(identities, torch.randn(stop - start, args.dim))
            written = time.perf_counter() - started
            size = sum(p.stat().st_size for p in Path(root, "bench").iterdir())
            child = subprocess.run(
                [sys.executable, "-c", LOOKUP, root, str(n), str(args.queries)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            lookup = json.loads(child.stdout.strip().splitlines()[-1])
            result["sizes"][n] = {"write_s": round(written, 2), "store_mib": round(size / 2**20, 1), **lookup}
            print(n, result["sizes"][n], file=sys.stderr)
    print(json.dumps(result, indent=1))
    if args.json:
        from negation_plugins.atomic import atomic_write_json

        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
