"""Evaluation at scale: images/s of ``negclip eval`` (``coco-retrieval``) with the image-embedding cache cold vs warm,
and images decoded in this process vs in 2 DataLoader workers.

    .venv/bin/python perf/bench_eval_scale.py --images 96

Each figure is one ``suite.evaluate`` call on a generated COCO-style set (photo-sized JPEGs, 640x480 with noise so
decoding costs what a real photo costs, one caption each) and a random-weight CLIP (``--arch``, built from its
open_clip config, nothing downloaded). "warm" is the second run that the cache is for: a text-only fine-tune of the
same model read against the on-disk image cache the cold run wrote (a new cache object), so it embeds no image and
only its captions. Prints one line per figure and the ratios; images/s counts the images of the set.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from negation_plugins.benchmarks.common import ImageEmbeddingCache, TextEmbeddingCache
from negation_plugins.benchmarks.suite import evaluate, pick_eval_device
from negation_plugins.factory import ClipBundle
from negation_plugins.testing import parse_bench_args


def random_clip(arch: str) -> ClipBundle:
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
    return ClipBundle(
        model=model.eval(), tokenizer=open_clip.get_tokenizer(arch), preprocess=preprocess, spec=f"random:{arch}"
    )


def text_only_finetune(clip: ClipBundle) -> ClipBundle:
    model = copy.deepcopy(clip.model)
    with torch.no_grad():
        model.text_projection.mul_(1.01)  # the text tower moved, the vision tower did not
    return ClipBundle(model, clip.tokenizer, clip.preprocess, spec=f"{clip.spec}-text-ft")


def coco_set(folder: Path, n: int) -> Path:
    """``n`` photo-sized JPEGs and a COCO captions JSON naming them."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(n):
        name = f"COCO_val2014_{i:012d}.jpg"
        pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, quality=90)
        images.append({"id": i, "file_name": name})
        annotations.append({"id": i, "image_id": i, "caption": f"a photo of thing number {i}, with no dog."})
    captions = folder / "captions.json"
    captions.write_text(json.dumps({"images": images, "annotations": annotations}))
    return captions


def images_per_second(clip, captions, cache_dir, workers, args) -> tuple[float, dict]:
    """One evaluation with fresh cache objects on ``cache_dir``: (images/s, image cache stats)."""
    image_cache = ImageEmbeddingCache(cache_dir)
    options = {"coco-retrieval": {"captions": str(captions), "images": str(captions.parent)}}
    start = time.perf_counter()
    run = evaluate(
        [clip],
        ["coco-retrieval"],
        options,
        cache=TextEmbeddingCache(cache_dir),
        image_cache=image_cache,
        batch_size=args.batch_size,
        progress=False,
        device=args.device,
        precision=args.precision,
        workers=workers,
    )
    seconds = time.perf_counter() - start
    return run["results"][clip.spec]["coco-retrieval"]["n_images"] / seconds, image_cache.stats()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None, help="default: bf16 on cuda")
    args = parse_bench_args(parser)
    args.device, args.precision = pick_eval_device(args.device, args.precision)

    base = random_clip(args.arch)
    base.model.to(args.device)
    tuned = text_only_finetune(base)
    with tempfile.TemporaryDirectory() as tmp:
        data, cache = Path(tmp) / "data", Path(tmp) / "cache"
        data.mkdir()
        captions = coco_set(data, args.images)
        images_per_second(base, captions, cache, 0, args)  # the base model's run fills the cache (and warms up)
        figures = {}
        for label, workers in (("cold, 0 workers", 0), ("cold, 2 workers", 2)):
            figures[label], stats = images_per_second(base, captions, Path(tmp) / f"cold-{workers}", workers, args)
            print(f"{label:<16} {figures[label]:8.1f} images/s   image cache {stats}")
        figures["warm"], stats = images_per_second(tuned, captions, cache, 0, args)
        print(f"{'warm (text-ft)':<16} {figures['warm']:8.1f} images/s   image cache {stats}")
    print(
        f"{args.arch} on {args.device} ({args.precision}), {args.images} images 640x480, batch {args.batch_size}, "
        f"{args.threads} torch thread(s): "
        f"warm/cold {figures['warm'] / figures['cold, 0 workers']:.1f}x, "
        f"2 workers/0 workers {figures['cold, 2 workers'] / figures['cold, 0 workers']:.2f}x"
    )


if __name__ == "__main__":
    main()
