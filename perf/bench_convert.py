"""Conversion exactness and speed at real CLIP text-tower sizes (random weights, CPU, 1 thread).

Prints, per size: max abs difference between open_clip and the converted transformers model for per-token
hidden states, pooled and projected features; whether open_clip -> transformers -> open_clip is bit-for-bit;
and the wall time of each conversion (including its built-in verification run).

    .venv/bin/python perf/bench_convert.py
    .venv/bin/python perf/bench_convert.py --json experiments/results/perf-convert.json   # what docs/loading.md shows
"""

import argparse
import shlex
import sys
import time

import torch

from negation_plugins.convert import (
    assert_same_outputs,
    build_open_clip,
    open_clip_to_transformers,
    transformers_to_open_clip,
)

SIZES = {  # name: (width, heads, layers, embed_dim), the text towers of OpenAI's ViT-B/32 and ViT-L/14
    "ViT-B/32 text": (512, 8, 12, 512),
    "ViT-L/14 text": (768, 12, 12, 768),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    figures = {}
    print(
        f"{'size':<15} {'hidden':>9} {'pooled':>9} {'projected':>9} {'round trip':>10} {'oc->hf s':>8} {'hf->oc s':>8}"
    )
    for name, (width, heads, layers, embed_dim) in SIZES.items():
        cfg = {
            "embed_dim": embed_dim,
            "quick_gelu": True,
            "vision_cfg": None,
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": heads, "layers": layers},
        }
        model = build_open_clip(cfg).eval()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("bias") or "ln" in n:
                    p.add_(torch.randn_like(p) * 0.1)
        start = time.perf_counter()
        hf = open_clip_to_transformers(model, "text_with_projection")
        to_hf = time.perf_counter() - start
        diffs = assert_same_outputs(model, hf, seed=1)
        start = time.perf_counter()
        back = transformers_to_open_clip(hf)
        to_oc = time.perf_counter() - start
        a, b = model.state_dict(), back.state_dict()
        exact = all(torch.equal(a[k], b[k]) for k in a if k != "logit_scale")
        print(
            f"{name:<15} {diffs['last_hidden_state']:>9.2e} {diffs['pooled']:>9.2e} {diffs['projected']:>9.2e} "
            f"{exact!s:>10} {to_hf:>8.2f} {to_oc:>8.2f}"
        )
        figures[name] = {
            "hidden": diffs["last_hidden_state"],
            "pooled": diffs["pooled"],
            "projected": diffs["projected"],
            "round_trip_exact": exact,
            "to_transformers_s": round(to_hf, 2),
            "to_open_clip_s": round(to_oc, 2),
        }
    if args.json:
        from negation_plugins.atomic import atomic_write_json

        command = shlex.join(["python", "perf/bench_convert.py", *sys.argv[1:]])
        atomic_write_json(args.json, {"benchmark": "convert", "command": command, "threads": 1, "sizes": figures})


if __name__ == "__main__":
    main()
