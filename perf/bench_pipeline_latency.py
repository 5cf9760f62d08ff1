"""Generation latency of a diffusers pipeline with the swapped (negation-aware) text encoder vs the stock one.

The swap replaces one CLIPTextModel by another of the same shape, so the goal is a ratio of 1.00. Runs on a
tiny SD pipeline built from configs (CPU); stock and swapped runs are interleaved and the median is reported.

    .venv/bin/python perf/bench_pipeline_latency.py [--repeats 9 --steps 4 --size 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import integrations
import negation_plugins
from negation_plugins.testing import parse_bench_args, tiny_clip, tiny_sd_pipeline


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    args = parse_bench_args(parser)

    pipe = tiny_sd_pipeline(cross_attention_dim=64)  # stock encoder: 2 layers, 64 wide
    stock = pipe.text_encoder
    negation_plugins.apply(pipe, tiny_clip(64, layers=2, seed=1))
    swapped = pipe.text_encoder
    prompt = "a street without cars, at night"

    def generate():
        pipe(
            prompt,
            num_inference_steps=args.steps,
            height=args.size,
            width=args.size,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        )

    def encode():
        pipe.encode_prompt(prompt, "cpu", 1, True)

    results = {}
    for label, fn in (("generate", generate), ("encode_prompt", encode)):
        times = {"stock": [], "swapped": []}
        for encoder in (stock, swapped):  # warm-up
            pipe.text_encoder = encoder
            fn()
        for _ in range(args.repeats):
            for name, encoder in (("stock", stock), ("swapped", swapped)):
                pipe.text_encoder = encoder
                times[name].append(timed(fn))
        results[label] = {name: statistics.median(values) for name, values in times.items()}

    print(
        f"tiny SD pipeline, {args.steps} steps, {args.size}x{args.size}, {args.threads} thread(s), "
        f"median of {args.repeats} interleaved runs"
    )
    for label, medians in results.items():
        ratio = medians["swapped"] / medians["stock"]
        print(
            f"{label:<14} stock {medians['stock'] * 1000:8.2f} ms   swapped {medians['swapped'] * 1000:8.2f} ms   "
            f"ratio swapped/stock {ratio:.2f} (goal 1.00)"
        )
    pipe.text_encoder = swapped
    integrations.restore(pipe)
    assert pipe.text_encoder is stock


if __name__ == "__main__":
    main()
