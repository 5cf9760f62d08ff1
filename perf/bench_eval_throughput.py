"""Evaluation throughput: images/s and captions/s through the suite's Encoder, with and without the text cache.

    .venv/bin/python perf/bench_eval_throughput.py --arch ViT-B-32 --images 64 --captions 512

Weights are random (``--arch``: an open_clip architecture built from its config, nothing downloaded) or any
``--model`` spec ``load_clip`` reads; speed does not depend on the weights. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from PIL import Image

from negation_plugins.benchmarks.common import Encoder, TextEmbeddingCache
from negation_plugins.benchmarks.probe import OBJECTS
from negation_plugins.factory import ClipBundle, load_clip
from negation_plugins.testing import parse_bench_args


def random_clip(arch: str) -> ClipBundle:
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
    return ClipBundle(
        model=model.eval(), tokenizer=open_clip.get_tokenizer(arch), preprocess=preprocess, spec=f"random:{arch}"
    )


def captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    forms = (
        "a photo of a {} and a {}.",
        "a {} next to a {}, but no {}.",
        "there is no {} near the {}.",
        "a {} without a {}.",
    )
    out = set()
    while len(out) < n:
        form = rng.choice(forms)
        out.add(form.format(*rng.sample(OBJECTS, form.count("{}"))) + f" #{len(out)}")
    return sorted(out)


def image_files(folder: Path, n: int) -> list[Path]:
    rng = random.Random(0)
    paths = []
    for i in range(n):
        path = folder / f"{i}.jpg"
        Image.new("RGB", (320, 240), tuple(rng.randrange(256) for _ in range(3))).save(path)
        paths.append(path)
    return paths


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture, random weights")
    parser.add_argument("--model", default=None, help="a load_clip spec instead of --arch")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--captions", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parse_bench_args(parser)

    clip = load_clip(args.model) if args.model else random_clip(args.arch)
    texts = captions(args.captions)
    print(f"model {clip.spec}, batch {args.batch_size}, torch threads {args.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = image_files(Path(tmp), args.images)
        Encoder(clip, progress=False).texts(texts[:8])  # warm-up (allocator, first-call overheads)

        seconds = timed(lambda: Encoder(clip, batch_size=args.batch_size, progress=False).image_files(paths))
        print(f"images/s (load + preprocess + encode): {args.images / seconds:.1f}")

        seconds = timed(lambda: Encoder(clip, batch_size=args.batch_size, progress=False).texts(texts))
        print(f"captions/s, no cache: {args.captions / seconds:.1f}")

        cache = TextEmbeddingCache(Path(tmp) / "cache")
        encoder = Encoder(clip, cache=cache, batch_size=args.batch_size, progress=False)
        print(f"model fingerprint (once per model and run): {timed(lambda: encoder.model_key):.2f} s")
        seconds = timed(lambda: encoder.texts(texts))
        print(f"captions/s, cold cache (encode + store): {args.captions / seconds:.1f}")
        seconds = timed(lambda: encoder.texts(texts))
        print(f"captions/s, warm in-memory cache: {args.captions / seconds:.1f}")
        seconds_save = timed(cache.save)
        reloaded = Encoder(
            clip, cache=TextEmbeddingCache(Path(tmp) / "cache"), batch_size=args.batch_size, progress=False
        )
        seconds = timed(lambda: reloaded.texts(texts))
        print(
            f"captions/s, warm on-disk cache (fingerprint + load file + look up, as in a new run): "
            f"{args.captions / seconds:.1f} (save took {seconds_save:.3f} s)"
        )


if __name__ == "__main__":
    main()
