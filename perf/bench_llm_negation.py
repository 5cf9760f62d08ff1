"""LLM negation throughput against a loopback OpenAI-compatible server that takes 100 ms per answer (goal: the
default concurrency serves >= 8x the requests/s of 8 requests in flight, the old behaviour).

Runs ``generate()`` with the ``llm`` negator (object, absence rewrite, presence rewrite: three requests per caption;
annotations verifier) at ``concurrency=8`` and at the default, each on its own caption set, against a server in
its own process (as vLLM is), and prints requests/s as the server counted them, the ratio, and what that means for
COCO's 414k captions (1.24M requests).

    .venv/bin/python perf/bench_llm_negation.py [--latency 0.1] [--captions-8 160] [--captions-default 1280]
"""

import argparse
import inspect
import json
import multiprocessing
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

from negation_plugins.data.generate import generate
from negation_plugins.data.io import read_captions
from negation_plugins.data.llm import LlmNegator
from negation_plugins.plugins import get_one
from negation_plugins.testing.chat_server import serve


def captions(folder: Path, n: int):
    """n COCO captions over 16 images with instances (so each caption needs all three requests)."""
    (folder / "images").mkdir(parents=True)
    images = [{"id": i, "file_name": f"{i}.png"} for i in range(16)]
    for image in images:
        Image.new("RGB", (8, 8)).save(folder / "images" / image["file_name"])
    annotations = [{"id": k, "image_id": k % 16, "caption": f"a dog on a couch near window {k}."} for k in range(n)]
    (folder / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    instances = {"images": images, "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "couch"}],
                 "annotations": [{"image_id": i, "category_id": 1 + i % 2} for i in range(16)]}  # fmt: skip
    (folder / "instances.json").write_text(json.dumps(instances))
    return read_captions(folder / "captions.json", folder / "instances.json", folder / "images")


def requests_per_second(latency: float, concurrency: int, n: int) -> tuple[float, int, int]:
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    server = context.Process(target=serve, args=(ports,), kwargs={"latency": latency}, daemon=True)
    server.start()
    url = f"http://127.0.0.1:{ports.get(timeout=60)}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            caption_set = captions(Path(tmp), n)
            negator = LlmNegator(url=f"{url}/v1", concurrency=concurrency)
            verifier = get_one("verifiers", "annotations")()
            started = time.perf_counter()
            summary = generate(caption_set, Path(tmp) / "out.jsonl", negator, verifier,
                               vocabulary=["dog", "couch", "cat"], progress=False)  # fmt: skip
            seconds = time.perf_counter() - started
        assert summary["fallbacks"] == 0 and summary["absence"] == summary["presence"] == n, summary
        with urllib.request.urlopen(f"{url}/stats") as response:
            stats = json.loads(response.read())
        return stats["requests"] / seconds, stats["requests"], stats["max_in_flight"]
    finally:
        server.kill()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.1, help="Seconds the server takes per answer.")
    parser.add_argument("--captions-8", type=int, default=160, help="Captions for the concurrency-8 run.")
    parser.add_argument("--captions-default", type=int, default=1280, help="Captions for the default run.")
    args = parser.parse_args()
    default = inspect.signature(LlmNegator).parameters["concurrency"].default
    old, old_n, old_peak = requests_per_second(args.latency, 8, args.captions_8)
    new, new_n, new_peak = requests_per_second(args.latency, default, args.captions_default)
    print(f"server latency {args.latency * 1000:.0f} ms; 3 requests per caption")
    print(f"concurrency 8:        {old:7.1f} requests/s ({old_n} requests, at most {old_peak} in flight)")
    print(f"concurrency {default} (default): {new:7.1f} requests/s ({new_n} requests, at most {new_peak} in flight)")
    print(f"ratio: {new / old:.2f}x (goal >= 8x; ideal {default / 8:.0f}x)")
    coco = 414_113 * 3
    print(f"COCO captions ({coco:,} requests): {coco / old / 3600:.1f} h at concurrency 8, "
          f"{coco / new / 3600:.1f} h at the default against this server")  # fmt: skip


if __name__ == "__main__":
    main()
