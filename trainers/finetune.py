"""Fine-tune a CLIP text encoder for negation. Read it top to bottom: setup, checks, loop, outputs.

    accelerate launch -m trainers.finetune --model local-dir:BASE --train records.jsonl --images IMAGES --output OUT
    python -m trainers.finetune --config finetune.yaml --max-steps 200

Two CPU processes: ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m trainers.finetune ...``.
The vision tower is frozen, so by default each image is embedded once before training (``--cache-image-features``);
only the text tower runs forward and backward in the loop.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from .batches import (
    BatchPlan,
    Example,
    absent_object_index,
    batch_rng,
    build_texts,
    distractor_images,
    load_examples,
    split_by_image,
    usable_examples,
)
from .config import ConfigError, TrainConfig, parse_config, validate
from .optim import adamw, warmup_cosine
from .tuning import apply_tuning, clamp_logit_scale, open_clip_model

logger = logging.getLogger("trainers.finetune")

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
BEST_FILE = "best_trainable.safetensors"
METRICS_FILE = "metrics.jsonl"
MIN_LR_RATE = 0.1  # the cosine ends at 10% of the peak learning rate


class TextEncoder(nn.Module):
    """The trained part as one module, so that DDP sees a single forward per step (and syncs its gradients):
    tokens -> normalized text features, plus the exp()'d logit scale."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clip = open_clip_model(self.model)
        return clip.encode_text(tokens, normalize=True), clip.logit_scale.exp()


class ImageFeatures:
    """Image embeddings from the frozen vision tower: computed once up front (cache) or per batch from disk."""

    def __init__(self, clip, preprocess, images_root: Path, paths: list[str], cache: bool, progress: bool):
        self.clip, self.preprocess, self.root, self.cached = clip, preprocess, images_root, None
        missing = [p for p in paths if not (images_root / p).is_file()]
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(paths)} record images do not exist under --images {images_root}, "
                f"e.g. {missing[0]!r}"
            )
        if not cache:  # decoded only when a batch needs them: find what a cheap check can now, not at step N
            from negation_plugins.data.io import check_image

            for path in paths:
                problem = check_image(images_root / path)
                if problem:
                    raise ValueError(f"{images_root / path}: {problem} (a record image under --images)")
        if cache:
            from tqdm.auto import tqdm

            self.index = {p: i for i, p in enumerate(paths)}
            chunks = [
                self._embed(paths[i : i + 256])
                for i in tqdm(range(0, len(paths), 256), disable=not progress, desc="caching image features")
            ]
            self.cached = torch.cat(chunks)

    @torch.no_grad()
    def _embed(self, paths: list[str]) -> torch.Tensor:
        from negation_plugins.images import load_rgb

        visual = open_clip_model(self.clip).visual
        visual.eval()
        pixels = [self.preprocess(load_rgb(self.root / path)) for path in paths]
        device = next(visual.parameters()).device
        features = open_clip_model(self.clip).encode_image(torch.stack(pixels).to(device), normalize=True)
        return features.float()

    def __call__(self, paths: list[str]) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[torch.tensor([self.index[p] for p in paths])]
        return self._embed(paths)


class TokenCache:
    """Tokenize each distinct text once: the same captions come back every epoch, and BPE in Python costs
    about as much as a tiny text tower's forward pass."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.context_length = int(getattr(tokenizer, "context_length", 77))
        self.rows: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        new = list(dict.fromkeys(t for t in texts if t not in self.rows))
        if new:
            self.rows.update(zip(new, self.tokenizer(new)))
        return torch.stack([self.rows[t] for t in texts])


def make_batch(
    encoder,
    tokenizer,
    image_features: ImageFeatures,
    examples: list[Example],
    requires: tuple[str, ...],
    rng,
    pool: list[Example],
    absent_index,
    otf_seed: int | None,
    device,
) -> dict:
    """Embed everything the objectives need; all texts go through ONE encoder forward."""
    batch = {"image": image_features([e.image for e in examples]).to(device)}
    texts, answers = build_texts(examples, requires, rng, pool)
    if "hybrid" in requires or "full" in requires:
        from negation_plugins.data.onthefly import OnTheFlyNegation

        objects = [e.present_objects for e in examples] if any(e.present_objects for e in examples) else None
        generated = OnTheFlyNegation(seed=otf_seed, context_length=tokenizer.context_length)(
            texts["caption"], image_embeds=batch["image"], objects=objects
        )
        texts["hybrid"], texts["full"] = generated["hybrid"], generated["full"]
    if "distractor_image" in requires:
        batch["distractor_image"] = image_features(distractor_images(examples, rng, absent_index, pool)).to(device)
    features, logit_scale = encoder(tokenizer([t for key in texts for t in texts[key]]).to(device))
    batch.update(split_text_features(features.float(), texts, answers, len(examples)))
    batch["logit_scale"] = logit_scale.float()
    return batch


def split_text_features(features: torch.Tensor, texts: dict[str, list[str]], answers, n_examples: int) -> dict:
    """Undo the one-forward flattening: rows per text key, MCQ options as (examples, options, dim) with answers."""
    parts, start = {}, 0
    for key, key_texts in texts.items():
        parts[key] = features[start : start + len(key_texts)]
        start += len(key_texts)
    if "mcq" in parts:
        parts["mcq"] = parts["mcq"].reshape(n_examples, -1, features.shape[-1])
        parts["mcq_answer"] = torch.tensor(answers, device=features.device)
    return parts


def check_model_and_tokenizer(bundle, examples: list[Example]) -> None:
    """Model/tokenizer mismatches fail here, not as an index error deep in the embedding layer."""
    clip = bundle.model
    tower = clip.text if hasattr(clip, "text") and isinstance(clip.text, nn.Module) else clip
    vocab = tower.token_embedding.num_embeddings
    positions = tower.positional_embedding.shape[0]
    if bundle.context_length != positions:
        raise ConfigError(
            f"--model {bundle.spec}: its tokenizer pads to {bundle.context_length} tokens but the text tower has "
            f"{positions} positions; use the tokenizer the model was trained with"
        )
    sample = [e.caption for e in examples[:200]] + [t for e in examples[:200] for t in e.absence + e.presence]
    tokens = bundle.tokenizer(sample)
    if int(tokens.max()) >= vocab:
        raise ConfigError(
            f"--model {bundle.spec}: the tokenizer produces token id {int(tokens.max())} but the text tower's "
            f"vocabulary has only {vocab} entries; model and tokenizer do not belong together"
        )
    if not bundle.has_vision:
        raise ConfigError(f"--model {bundle.spec} has no vision tower; training needs image embeddings")


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def latest_checkpoint(output: Path) -> Path | None:
    folder = output / CHECKPOINTS
    done = sorted(p for p in folder.glob("step-*") if (p / STATE_FILE).is_file()) if folder.is_dir() else []
    return done[-1] if done else None


def evaluate(state, config, val: list[Example], pool, absent_index, make) -> dict:
    """Validation loss on fixed batches (the same every time) and, if given, MCQ accuracy."""
    results = {}
    model = state["model"]
    if val:
        losses = []
        with torch.no_grad():
            for number, start in enumerate(range(0, len(val), config.batch_size)):
                chunk = val[start : start + config.batch_size]
                if len(chunk) < 2:
                    continue
                batch = make(chunk, batch_rng(config.seed, number, 0, "val"), config.seed + 10_000 + number)
                losses.append(float(state["objective"](batch)[0]))
        if losses:
            results["validation"] = {"loss": round(sum(losses) / len(losses), 5)}
    if config.eval_mcq:
        results["mcq"] = run_benchmark_mcq(state["bundle"], model, config)
    model.train()
    open_clip_model(model).visual.eval()
    return results


def run_benchmark_mcq(bundle, model, config: TrainConfig) -> dict:
    from negation_plugins.benchmarks.mcq import run_mcq
    from negation_plugins.factory import ClipBundle

    clip = ClipBundle(open_clip_model(model), bundle.tokenizer, bundle.preprocess, bundle.spec, bundle.info)
    return run_mcq(clip, config.eval_mcq, config.eval_mcq_images or config.images, progress=False)


def score(results: dict, select_by: str) -> float | None:
    """Higher is better."""
    if select_by == "mcq":
        return results.get("mcq", {}).get("accuracy")
    loss = results.get("validation", {}).get("loss")
    return None if loss is None else -loss


def train(config: TrainConfig) -> dict:
    """Run one fine-tuning; returns the results dict (also written to OUTPUT/results.json)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from negation_plugins import load_clip
    from negation_plugins.losses import parse_objectives

    # ---- settings and everything that can fail before training -------------------------------------------------
    validate(config)
    output = Path(config.output)
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("--mixed-precision fp16 needs a GPU; on CPU use bf16 or no")
    try:
        objective = parse_objectives(config.objective)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    requires = objective.requires
    if config.negation == "on-the-fly" and not {"hybrid", "full"} & set(requires):
        raise ConfigError(
            f"--negation on-the-fly builds negated texts only for objectives that read them (tng); "
            f"--objective {' + '.join(config.objective)} would train without any negation: add --objective tng"
        )
    _forget_previous_run_settings()
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=None if config.log_with == "none" else config.log_with,
        project_dir=str(output / "logs"),
    )
    set_seed(config.seed)
    is_main = accelerator.is_main_process

    examples = load_examples(config.train, config.negation, config.images or None, config.instances)
    examples, dropped = usable_examples(examples, requires, config.train)
    bundle = load_clip(config.model, device=accelerator.device)
    check_model_and_tokenizer(bundle, examples)
    if dropped and is_main:
        logger.warning("%d example(s) lack the negation kinds %s needs and are not used", dropped, objective.name)
    train_set, val_set = split_by_image(examples, config.val_fraction, config.seed)
    model, trainable = apply_tuning(
        bundle.model,
        config.tuning,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_targets=config.lora_targets,
        seed=config.seed,
    )
    if not trainable:
        raise ConfigError(f"--tuning {config.tuning} leaves no parameter to train")

    images_root = Path(config.images or ".")
    image_features = ImageFeatures(
        model,
        bundle.preprocess,
        images_root,
        sorted({e.image for e in examples}),
        config.cache_image_features,
        progress=config.progress and is_main,
    )
    absent_index = absent_object_index(train_set)

    encoder = TextEncoder(model)
    optimizer = adamw(encoder, config.lr, config.weight_decay)
    plan = BatchPlan(len(train_set), config.batch_size, accelerator.num_processes, config.seed)
    accum = config.gradient_accumulation_steps
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * plan.micro_batches_per_epoch() / accum))
    # Stepped here once per optimizer step (accelerate's prepared scheduler steps once per process per step);
    # its state travels in STATE_FILE (plain JSON, no pickle to load on resume).
    schedule = warmup_cosine(optimizer, config.warmup_steps, total_steps, min_lr_rate=MIN_LR_RATE)
    encoder, optimizer = accelerator.prepare(encoder, optimizer)
    device = accelerator.device
    state = {"model": model, "objective": objective, "bundle": bundle}

    val_absent_index = absent_object_index(val_set)
    tokens = TokenCache(bundle.tokenizer)

    def make(chunk, rng, otf_seed, pool=train_set, index=absent_index, text_encoder=encoder):
        return make_batch(text_encoder, tokens, image_features, chunk, requires, rng, pool, index, otf_seed, device)

    def make_eval(chunk, rng, otf_seed):
        return make(
            chunk, rng, otf_seed, pool=val_set, index=val_absent_index, text_encoder=accelerator.unwrap_model(encoder)
        )

    # ---- resume -----------------------------------------------------------------------------------------------
    step, best, best_state, bad_evals, history = 0, None, None, 0, []
    checkpoint = latest_checkpoint(output) if config.resume else None
    if config.resume and checkpoint is None and is_main:
        logger.warning("--resume: no checkpoint in %s; starting from step 0", output / CHECKPOINTS)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        saved = json.loads((checkpoint / STATE_FILE).read_text())
        step, best, bad_evals, history = saved["step"], saved["best"], saved["bad_evals"], saved["history"]
        schedule.load_state_dict(saved["schedule"])
        results_before = saved["results_before"]
        if (checkpoint / BEST_FILE).is_file():
            from safetensors.torch import load_file

            best_state = load_file(str(checkpoint / BEST_FILE))
        if is_main:  # forget steps logged after this checkpoint by the interrupted run
            kept = [line for line in _read_lines(output / METRICS_FILE) if json.loads(line)["step"] <= step]
            (output / METRICS_FILE).write_text("".join(line + "\n" for line in kept))
    else:
        results_before = evaluate(state, config, val_set, train_set, absent_index, make_eval)
        if is_main:
            output.mkdir(parents=True, exist_ok=True)
            (output / METRICS_FILE).write_text("")
    if config.log_with != "none":
        accelerator.init_trackers("finetune", config=_tracker_config(config))

    # ---- the loop ---------------------------------------------------------------------------------------------
    start_time = time.perf_counter()
    examples_seen = 0
    bar = tqdm(total=total_steps, initial=step, desc="fine-tuning", disable=not (config.progress and is_main))
    model.train()
    open_clip_model(model).visual.eval()
    stopped_early = False
    while step < total_steps:
        parts_sum: dict[str, float] = {}
        loss_sum = 0.0
        for micro in range(accum):
            micro_batch = step * accum + micro
            chunk = [train_set[i] for i in plan.indices(micro_batch, accelerator.process_index)]
            rng = batch_rng(config.seed, micro_batch, accelerator.process_index)
            with accelerator.accumulate(encoder), accelerator.autocast():
                batch = make(chunk, rng, config.seed * 1_000_003 + micro_batch * 101 + accelerator.process_index)
                loss, parts = objective(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.grad_clip > 0:
                    accelerator.clip_grad_norm_(encoder.parameters(), config.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += float(loss.detach()) / accum
            for name, value in parts.items():
                parts_sum[name] = parts_sum.get(name, 0.0) + float(value) / accum
            examples_seen += len(chunk)
        clamp_logit_scale(model)
        step += 1
        record = {
            "step": step,
            "loss": round(loss_sum, 6),
            "lr": optimizer.param_groups[0]["lr"],
            **{f"loss/{k}": round(v, 6) for k, v in parts_sum.items()},
        }
        schedule.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.4f}")

        if step % config.eval_every == 0 or step == total_steps:
            results = evaluate(state, config, val_set, train_set, absent_index, make_eval)
            record.update(_flat(results))
            current = score(results, config.select_by)
            if current is not None and (best is None or current > best):
                best, best_state, bad_evals = current, trainable_state(model), 0
            elif current is not None:
                bad_evals += 1
            if config.patience and bad_evals >= config.patience:
                stopped_early = True
        history.append(record)
        if config.log_with != "none":
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
        if is_main:
            with open(output / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
        if config.save_every and step % config.save_every == 0 and step < total_steps and not stopped_early:
            save_checkpoint(
                accelerator,
                output,
                step,
                {
                    "step": step,
                    "best": best,
                    "bad_evals": bad_evals,
                    "history": history,
                    "results_before": results_before,
                    "schedule": schedule.state_dict(),
                },
                best_state,
            )
        if stopped_early:
            if is_main:
                logger.info("early stop at step %d: %d validations without improvement", step, bad_evals)
            break
    bar.close()
    train_seconds = time.perf_counter() - start_time

    # ---- best weights, final evaluation, outputs --------------------------------------------------------------
    accelerator.wait_for_everyone()
    if best_state is not None:
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in best_state.items():
                named[name].copy_(value.to(named[name].device))
    results_after = evaluate(state, config, val_set, train_set, absent_index, make_eval)
    # One fingerprint of the trained weights per process: equal on all ranks iff gradients were synced.
    fingerprint = torch.tensor(
        [sum(float(p.detach().double().sum()) for p in model.parameters() if p.requires_grad)],
        dtype=torch.float64,
        device=device,
    )
    summary = {
        "rank_weight_fingerprints": accelerator.gather(fingerprint).tolist(),
        "steps": step,
        "total_steps": total_steps,
        "stopped_early": stopped_early,
        "best_score": best,
        "select_by": config.select_by,
        "train_examples": len(train_set),
        "val_examples": len(val_set),
        "dropped_examples": dropped,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_seconds": round(train_seconds, 2),
        "examples_per_second": round(examples_seen / max(train_seconds, 1e-9), 2),
        "num_processes": accelerator.num_processes,
        "results_before": results_before,
        "results_after": results_after,
        "config": config.to_dict(),
    }
    if is_main:
        from .export import write_outputs

        write_outputs(output, model=model, bundle=bundle, config=config, summary=summary)
        if config.push_to_hub:
            from negation_plugins.hub import push

            summary["hub_commit"] = push(output, config.push_to_hub, private=config.hub_private, adapter_only=False)
    accelerator.wait_for_everyone()
    if config.log_with != "none":
        accelerator.end_training()
    return summary


def _forget_previous_run_settings() -> None:
    """accelerate keeps mixed-precision and accumulation settings in process-wide singletons; a second
    ``train()`` in the same Python process (benchmarks, tests, the demo) must not inherit the first one's.
    The distributed process group (PartialState) is kept."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def save_checkpoint(accelerator, output: Path, step: int, trainer_state: dict, best_state) -> None:
    """accelerate's full state (model, optimizer, RNG) plus ours, written to a temp folder then renamed, so a
    kill mid-save never leaves a checkpoint that looks complete."""
    from safetensors.torch import save_file

    final = output / CHECKPOINTS / f"step-{step:07d}"
    tmp = output / CHECKPOINTS / f".tmp-step-{step:07d}"
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if best_state is not None:
            save_file({k: v.contiguous() for k, v in best_state.items()}, str(tmp / BEST_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state))
        os.replace(tmp, final)
    accelerator.wait_for_everyone()


def _remove_unfinished_output(output: Path) -> None:
    """A run that failed before its first checkpoint leaves nothing to resume: remove the folder it created
    (logs, metrics.jsonl) so no half-made output looks like a result. Only the main process deletes."""
    import shutil

    if os.environ.get("RANK", "0") == "0" and output.is_dir() and latest_checkpoint(output) is None:
        shutil.rmtree(output, ignore_errors=True)


def _read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _flat(results: dict) -> dict:
    return {
        f"{bench}/{metric}": value
        for bench, metrics in results.items()
        for metric, value in metrics.items()
        if isinstance(value, (int, float)) and value is not None
    }


def _tracker_config(config: TrainConfig) -> dict:
    return {
        k: (",".join(v) if isinstance(v, list) else v)
        for k, v in config.to_dict().items()
        if isinstance(v, (int, float, str, bool, list))
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = None
    try:
        config = parse_config(argv)
        output_existed = Path(config.output).exists()
        summary = train(config)
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        if config is not None and not output_existed:
            _remove_unfinished_output(Path(config.output))
        return 2
    after = summary["results_after"]
    print(json.dumps({"output": config.output, "steps": summary["steps"], "results_after": after}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
