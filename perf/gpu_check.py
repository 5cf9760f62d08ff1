"""GPU check (run on a GPU machine; never by CI): bf16 step time and peak memory of the trainer's text-tower step.

    python perf/gpu_check.py                      # ViT-B-32 and ViT-L-14, batch 128, with/without checkpointing
    python perf/gpu_check.py --device cpu --batch-size 4 --steps 2 --models ViT-B-32   # smoke run

Models are built from open_clip's configs with random weights (speed and memory do not depend on the values). One
step = the trainer's step with the default objectives (negbench-mcq + clip:0.5: 5 texts per example, one text-tower
forward), backward, AdamW on the full text tower, under bf16 autocast, image features from the (frozen) store.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def step_figures(name: str, batch_size: int, checkpointing: bool, steps: int, device: torch.device) -> dict:
    import open_clip

    from negation_plugins.losses import parse_objectives
    from trainers.config import DEFAULT_OBJECTIVES, build_config
    from trainers.finetune import TextEncoder, split_text_features
    from trainers.optim import adamw
    from trainers.tuning import apply_tuning, enable_gradient_checkpointing

    model = open_clip.create_model(name, pretrained=None).to(device)
    model, _ = apply_tuning(model, "full")
    if checkpointing:
        enable_gradient_checkpointing(model)
    encoder = TextEncoder(model)
    defaults = build_config(tuning="full")
    optimizer = adamw(encoder, defaults.lr, defaults.weight_decay)
    objective = parse_objectives(list(DEFAULT_OBJECTIVES))
    dim = model.text_projection.shape[1]
    context = model.positional_embedding.shape[0]
    layout = [("caption", 0), ("mcq", 4)]  # one caption and 4 MCQ options per example
    tokens = torch.randint(1, 49_000, (5 * batch_size, context), device=device)
    tokens[:, -1] = 49407  # end-of-text: pooled position
    image = torch.nn.functional.normalize(torch.randn(batch_size, dim, device=device), dim=-1)
    answers = torch.randint(0, 4, (batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for number in range(steps + 3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        with autocast:
            features, scale = encoder(tokens)
            batch = {"image": image, "mcq_answer": answers, "logit_scale": scale.float()}
            batch.update(split_text_features(features.float(), layout, batch_size))
            loss, _ = objective(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if number >= 3:  # warm-up steps excluded
            times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del model, encoder, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"ms": 1000 * statistics.median(times), "spread": 1000 * (max(times) - min(times)), "peak_gib": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ViT-B-32,ViT-L-14")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device here; run on a GPU machine (or --device cpu for a smoke run)", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    print(
        f"bf16 autocast, batch {args.batch_size} examples (5 texts each), median of {args.steps} steps after 3 warm-up"
    )
    for name in args.models.split(","):
        for checkpointing in (False, True):
            figures = step_figures(name, args.batch_size, checkpointing, args.steps, device)
            peak = "n/a (CPU)" if figures["peak_gib"] is None else f"{figures['peak_gib']:.2f} GiB"
            print(
                f"{name:<9} text tower, gradient checkpointing {'on ' if checkpointing else 'off'}: "
                f"{figures['ms']:8.1f} ms/step (spread {figures['spread']:.1f} ms), peak memory {peak}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
