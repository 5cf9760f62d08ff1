"""Template negator throughput on one core (goal: >= 20,000 captions/s).

Times are CPU time of this process (time.process_time), so other load on the machine does not count.
Captions are COCO-style sentences (a hand-written set spanning short to long, lists, 'with' phrases) and the
synthetic world's captions; each is negated for absence (caption + a random absent COCO object) and for
presence (an object of the caption removed, then negated). Prints captions/s for each and for the batch API.

    .venv/bin/python perf/bench_template.py
"""

import random
import time

import torch

from negation_plugins.data.io import CaptionItem
from negation_plugins.data.negators import (
    TemplateNegator,
    absence_candidates,
    hybrid,
    presence,
)
from negation_plugins.data.vocabulary import COCO_CATEGORIES

COCO_STYLE = [
    "A man riding a wave on top of a surfboard.",
    "A kitchen with a stove, a sink and a refrigerator.",
    "Two giraffes standing next to each other in a field.",
    "A woman with an umbrella walking down a rainy street.",
    "a plate of food with broccoli, carrots and a fork",
    "A cat sitting on a laptop keyboard on a wooden desk.",
    "A group of people standing around a table with pizza and wine glasses.",
    "A red double decker bus driving down a city street next to tall buildings and a crowd of tourists.",
    "A little boy holding a teddy bear.",
    "An elephant walking through tall grass near a river at sunset with birds flying overhead.",
    "a blue triangle, a red star and a green circle.",
    "A dog with a frisbee in its mouth running across a park.",
]


def main(n: int = 200_000):
    torch.set_num_threads(1)
    rng = random.Random(0)
    captions = [rng.choice(COCO_STYLE) for _ in range(n)]
    objects = [rng.choice(COCO_CATEGORIES) for _ in range(n)]
    hybrid("warm up", "dog", rng)

    start = time.process_time()
    out = [hybrid(c, o, rng) for c, o in zip(captions, objects)]
    absence_s = time.process_time() - start
    refused = sum(t is None for t in out)

    present = ["surfboard", "sink", "giraffe", "umbrella", "broccoli", "cat", "pizza", "bus", "teddy bear",
               "elephant", "star", "dog"]  # fmt: skip
    pairs = [(c, present[COCO_STYLE.index(c)]) for c in captions]
    start = time.process_time()
    for c, o in pairs:
        presence(c, o, (), rng)
    presence_s = time.process_time() - start

    negator = TemplateNegator()
    items = [CaptionItem("x.png", c) for c in captions[: n // 4]]
    start = time.process_time()
    chosen = [absence_candidates(item, COCO_CATEGORIES, rng, k=1)[0] for item in items]
    negator.rewrite(items, chosen, "absence", rng)
    batch_s = time.process_time() - start

    print(f"template negator, 1 thread, {n} COCO-style captions")
    print(f"absence (hybrid) : {n / absence_s:>10,.0f} captions/s  ({refused} refused: object already mentioned)")
    print(f"presence         : {n / presence_s:>10,.0f} captions/s")
    print(f"propose+rewrite  : {len(items) / batch_s:>10,.0f} captions/s  (random absent object from 80 + hybrid)")


if __name__ == "__main__":
    main()
