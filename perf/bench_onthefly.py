"""Cost of on-the-fly negation (TNG-CLIP) as a fraction of a training step on a world-sized CLIP (goal <= 1 %).

A training step here is what the trainer does per batch with TNG: tokenize the 3N texts (hybrid, full,
original), encode the images (vision frozen, no grad), encode the texts, contrastive loss, backward, AdamW step.
Times are CPU time of this process (1 thread), so other load on the machine does not count.
The on-the-fly part is ``OnTheFlyNegation(captions, image_embeds, objects)``. Model: the world's tiny CLIP
(embed 64, width 64, 2+2 layers, 32x32 images, 32-token context), batch 128, 1 thread. Prints both times and the ratio.

    .venv/bin/python perf/bench_onthefly.py
"""

import random
import statistics
import time

import open_clip
import torch

from negation_plugins.data.onthefly import OnTheFlyNegation
from trainers.pretrain_world import PretrainConfig

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "arrow")
COLOURS = ("red", "green", "blue", "yellow")


def world_batch(rng: random.Random, n: int):
    captions, objects = [], []
    for _ in range(n):
        picked = rng.sample(SHAPES, rng.randint(1, 3))
        phrases = [f"a {rng.choice(COLOURS)} {s}" for s in picked]
        listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        captions.append(rng.choice(["{}.", "a photo of {}.", "there is {}."]).format(listed))
        objects.append(picked)
    return captions, objects


def main(batch_size: int = 128, steps: int = 10):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = open_clip.CLIP(**PretrainConfig().model_cfg(32))
    model.visual.requires_grad_(False)
    context_length = model.context_length
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=context_length)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    otf = OnTheFlyNegation(seed=0, vocabulary=SHAPES, context_length=context_length)
    rng = random.Random(0)
    images = torch.randn(batch_size, 3, 32, 32)
    otf_times, step_times = [], []
    for step in range(steps + 1):
        captions, objects = world_batch(rng, batch_size)
        start = time.process_time()
        with torch.no_grad():
            image_features = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        step_start = time.process_time()
        negations = otf(captions, image_features, objects)
        otf_time = time.process_time() - step_start
        texts = tokenizer(negations["hybrid"] + negations["full"] + captions)
        text_features = torch.nn.functional.normalize(model.encode_text(texts), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T  # N x 3N
        loss = torch.nn.functional.cross_entropy(logits.T[:batch_size], torch.arange(batch_size))
        loss = loss + torch.nn.functional.cross_entropy(logits[:, 2 * batch_size :], torch.arange(batch_size))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step warms caches
            otf_times.append(otf_time)
            step_times.append(time.process_time() - start)
    otf_s, step_s = statistics.median(otf_times), statistics.median(step_times)
    print(f"world-sized CLIP, batch {batch_size}, 1 thread, median of {steps} steps")
    print(f"on-the-fly negation: {otf_s * 1e3:8.2f} ms/batch")
    print(f"full training step : {step_s * 1e3:8.2f} ms/batch (includes the on-the-fly part)")
    print(f"fraction           : {100 * otf_s / step_s:8.2f} %  (goal <= 1 %; TNG-CLIP reports 2.5 %)")


if __name__ == "__main__":
    main()
