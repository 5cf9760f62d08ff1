"""Fine-tune a CLIP text encoder for negation. :func:`train` reads top to bottom: set up, evaluate, the loop, outputs.

    accelerate launch -m trainers.finetune --model local-dir:BASE --train records.jsonl --images IMAGES --output OUT
    python -m trainers.finetune --config finetune.yaml --max-steps 200

Two CPU processes: ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m trainers.finetune ...``.
The vision tower is frozen, so by default each image is embedded once before training (``--cache-image-features``);
only the text tower runs forward and backward in the loop. What a batch holds comes from the objectives' batch keys
(:mod:`negation_plugins.losses.batch`); the DataLoader makes them (:mod:`trainers.data`), this file runs the model.

Preemption: on a signal of ``--save-on-signal`` (default TERM,USR1) every process finishes its step, a resumable
checkpoint is saved and the run exits with :data:`REQUEUE_EXIT_CODE`; ``--resume latest`` continues it exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from negation_plugins.atomic import DiskFullError, disk_full_errno
from negation_plugins.checks import own_message
from negation_plugins.losses.batch import MODEL_KEYS, BatchKey, Example

from .batches import BatchPlan, EvalPlan, load_examples, split_by_image, usable_examples
from .config import (
    CHECKPOINTS,
    REQUEUE_EXIT_CODE,
    STATE_FILE,
    ConfigError,
    TrainConfig,
    latest_checkpoint,
    lora_token_words,
    parse_command_line,
    resolve_defaults,
    validate,
)
from .data import HostImages, MicroBatches, TokenCache, batch_loader, record_texts
from .features import autocast_bf16, build_feature_table, default_root, embed_files
from .optim import adamw, warmup_cosine
from .streaming import StreamInput, StreamTokens, streamed
from .tuning import apply_tuning, clamp_logit_scale, enable_gradient_checkpointing, open_clip_model, word_token_ids

logger = logging.getLogger("trainers.finetune")

BEST_FILE = "best_trainable.safetensors"
METRICS_FILE = "metrics.jsonl"
MIN_LR_RATE = 0.1  # the cosine ends at 10% of the peak learning rate
AFFIRMATION_DROP = 0.05  # --eval-mcq: warn when affirmation accuracy falls this far below its value before training


class TextEncoder(nn.Module):
    """The trained part as one module, so that DDP sees a single forward per step (and syncs its gradients):
    tokens -> normalized text features, plus the exp()'d logit scale."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clip = open_clip_model(self.model)
        return clip.encode_text(tokens, normalize=True), clip.logit_scale.exp()


class ImageSource:
    """Image features for the training thread: rows of the feature table (kept on the device), or the frozen vision
    tower run on pixels the DataLoader workers decoded (``--no-cache-image-features``)."""

    def __init__(self, clip, table: torch.Tensor | None, device):
        self.clip, self.device = clip, device
        self.table = None if table is None else table.to(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.table is not None:
            return self.table.index_select(0, images).float()
        with autocast_bf16(self.device):
            return self.clip.encode_image(images, normalize=True).float()


def make_batch(encoder, item: dict, images: ImageSource, tokens: TokenCache, keys: list[BatchKey], gather=None) -> dict:
    """Embed what a DataLoader item holds: images through :class:`ImageSource`, all texts through ONE encoder
    forward. Texts made after the images (on-the-fly negation without a feature table) are made here, from this
    step's image features, by the same code and seed the DataLoader workers use. With ``gather`` (an Accelerator,
    for ``--gather-negatives``) the returned rows are the global batch (see :func:`gather_batch`)."""
    batch = {name: images(rows) for name, rows in item["images"].items()}
    layout, token_ids = list(item["layout"]), item["tokens"]
    if "on_the_fly" in item:
        features = batch["image"] if gather is None else gather.gather(batch["image"])
        made = item["on_the_fly"].make([key for key in keys if key.after_images], features)
        layout += [(name, 0) for name in made]
        token_ids = torch.cat([token_ids, tokens([text for texts in made.values() for text in texts])])
    features, logit_scale = encoder(token_ids.to(images.device, non_blocking=True))
    batch.update(split_text_features(features.float(), layout, item["n"]))
    batch.update({name: labels.to(images.device) for name, labels in item["labels"].items()})
    batch["logit_scale"] = logit_scale.float()
    return batch if gather is None else gather_batch(batch, gather)


def split_text_features(features: torch.Tensor, layout: list[tuple[str, int]], n_examples: int) -> dict:
    """Undo the one-forward flattening: ``layout`` lists each text key with its options per example, in order
    (0: one text per example -> (N, D); K: K options per example -> (N, K, D))."""
    parts, start = {}, 0
    for key, options in layout:
        count = n_examples * max(options, 1)
        rows = features[start : start + count]
        parts[key] = rows.reshape(n_examples, options, -1) if options else rows
        start += count
    return parts


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient times ``factor`` in backward."""

    @staticmethod
    def forward(ctx, tensor, factor):
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def _own_rows(accelerator, n: int) -> slice:
    return slice(accelerator.process_index * n, (accelerator.process_index + 1) * n)


def gather_with_grad(tensor: torch.Tensor, accelerator) -> torch.Tensor:
    """Every process's rows in rank order; this process's own rows keep their autograd graph (open_clip's
    gather_with_grad with local rows put back), the others are constants."""
    gathered = accelerator.gather(tensor.detach().contiguous())
    own = _own_rows(accelerator, tensor.shape[0])
    return torch.cat([gathered[: own.start], tensor, gathered[own.stop :]])


def gather_batch(batch: dict, accelerator) -> dict:
    """The global batch for ``--gather-negatives``: each process computes the loss of all processes' examples.

    The one gradient rule of it: each process's own rows get their gradient times ``num_processes`` (each process
    backpropagates the whole global loss but holds only its own rows' graph), so DDP's average over processes is
    exactly the gradient of the single-process loss on the concatenated batch; the logit scale appears whole on
    every process and keeps its plain gradient."""
    world = accelerator.num_processes
    return {
        key: value
        if key in MODEL_KEYS
        else gather_with_grad(_ScaleGradient.apply(value, world) if value.requires_grad else value, accelerator)
        for key, value in batch.items()
    }


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


def check_images_exist(root: Path, paths: list[str]) -> None:
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(paths)} record images do not exist under --images {root}, e.g. {missing[0]!r}"
        )


def eval_schedule(config: TrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(validate every N steps, validation batches per evaluation). Defaults: once per epoch, and at most
    ``N // 10`` batches, never more than 50: a forward-only batch costs about a third of a training step, so each
    validation costs ~3 % of the steps since the last one, whatever the dataset size."""
    every = config.eval_every or steps_per_epoch
    batches = config.val_max_batches or max(1, min(50, every // 10))
    return every, batches


class McqEval:
    """In-training ``--eval-mcq``: at most ``cap`` rows of the CSV (evenly spread, the same every time), each process
    scoring its own share with image features from the store and captions tokenized once; the predictions of all
    processes are gathered and scored as ``negclip eval``'s mcq benchmark scores them."""

    def __init__(self, rows, files: list[Path], n_rows: int):
        self.rows, self.files, self.n_rows = rows, files, n_rows
        self.own_rows: list[int] = []

    @classmethod
    def read(cls, config: TrainConfig, cap: int) -> McqEval:
        """Rows and resolved image paths; a bad row or a missing/unreadable image fails naming the CSV and row."""
        from negation_plugins.benchmarks.common import RowProblems, resolve_image
        from negation_plugins.benchmarks.mcq import read_mcq_csv

        problems = RowProblems(config.eval_mcq)
        rows = read_mcq_csv(config.eval_mcq, problems)
        n_rows, rows = len(rows), rows[:: -(-len(rows) // cap)]
        files = []
        for row in rows:
            path, why = resolve_image(
                row.image_path, config.eval_mcq_images or config.images, Path(config.eval_mcq).parent
            )
            if path is None:
                problems.bad(row.row, why)
            files.append(path)
        return cls(rows, files, n_rows)

    def own(self, accelerator) -> list[int]:
        return list(range(accelerator.process_index, len(self.rows), accelerator.num_processes))

    def prepare(self, tokenizer, image_features: torch.Tensor | None, own_rows: list[int]) -> None:
        """This process's rows: their image features and their captions' tokens, kept for every evaluation."""
        self.own_rows = own_rows
        if own_rows:
            self.image_features = image_features.float()
            self.tokens = tokenizer([c for i in own_rows for c in self.rows[i].captions])

    @torch.no_grad()
    def accuracy(self, encoder, batch_size: int, accelerator) -> dict:
        from accelerate.utils import gather_object

        from negation_plugins.benchmarks.mcq import mcq_accuracy, mcq_predictions, phrasing_split_accuracy

        device, step, mine = accelerator.device, 4 * batch_size, []
        if self.own_rows:
            options = [
                encoder(self.tokens[i : i + step].to(device))[0].float() for i in range(0, len(self.tokens), step)
            ]
            options = torch.cat(options).reshape(len(self.own_rows), 4, -1)
            predictions = mcq_predictions(self.image_features.to(device), options).tolist()
            mine = list(zip(self.own_rows, predictions))
        predictions = [p for _, p in sorted(gather_object(mine))]
        return {
            **mcq_accuracy(predictions, [r.correct_answer for r in self.rows], [r.type for r in self.rows]),
            **phrasing_split_accuracy(predictions, self.rows),
            "n_rows_in_csv": self.n_rows,
        }


def score(results: dict, select_by: str) -> float | None:
    """Higher is better."""
    if select_by == "mcq":
        return results.get("mcq", {}).get("accuracy")
    loss = results.get("validation", {}).get("loss")
    return None if loss is None else -loss


@dataclass
class Run:
    """What :func:`setup` prepares once; the loop reads it and never changes it."""

    config: TrainConfig
    accelerator: Any
    output: Path
    model: nn.Module
    bundle: Any
    encoder: nn.Module  # the accelerate-prepared TextEncoder
    optimizer: Any
    schedule: Any
    objective: Any
    keys: list[BatchKey]
    images: ImageSource
    tokens: TokenCache
    train_data: MicroBatches
    val_loader: Any  # the same validation batches every time, or None
    mcq: McqEval | None
    gather: Any  # the Accelerator under --gather-negatives with several processes, else None
    total_steps: int
    eval_every: int
    facts: dict  # what setup found (examples, features, tokens), reported in results.json


@dataclass
class TrainState:
    """What the loop changes; everything but the timers, the best weights and the pending losses is saved in each
    checkpoint's STATE_FILE (plain JSON: no pickle to load on resume)."""

    step: int = 0
    best: float | None = None
    bad_evals: int = 0
    history: list[dict] = field(default_factory=list)
    results_before: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    best_weights: dict | None = None
    pending: list[tuple] = field(default_factory=list)  # (step, lr, loss, parts) on the device until a flush
    validation_seconds: float = 0.0
    evaluations: int = 0
    examples_seen: int = 0
    stopped_early: bool = False

    SAVED = ("step", "best", "bad_evals", "history", "results_before", "warnings")

    def saved(self, schedule) -> dict:
        return {**{name: getattr(self, name) for name in self.SAVED}, "schedule": schedule.state_dict()}


def setup(config: TrainConfig) -> Run:
    """Everything that can fail before training, in the order a run needs it: objectives, accelerate, examples,
    model, tuning, image features, optimizer and the DataLoaders."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from negation_plugins import load_clip
    from negation_plugins.losses import parse_objectives

    output = Path(config.output)
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("--mixed-precision fp16 needs a GPU; on CPU use bf16 or no")
    try:
        objective = parse_objectives(config.objective)
        keys = objective.batch_keys
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if config.negation == "on-the-fly" and not any(key.after_images for key in keys):
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
    if torch.cuda.is_available():  # TF32 matmuls on Ampere+ (diffusers' --allow_tf32; fp32 elsewhere unchanged)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    stream = None  # streamed input (trainers/streaming.py): rows read lazily, nothing of the data held up front
    if streamed(config):
        stream = StreamInput(config, keys, accelerator.process_index, accelerator.num_processes)
        examples = stream.sample()  # the first rows, for the checks below
    else:
        examples = load_examples(config.train, config.negation, config.images or None, config.instances)
    examples, dropped = usable_examples(examples, keys, config.train)
    bundle = load_clip(config.model, device=accelerator.device)
    check_model_and_tokenizer(bundle, examples)
    if dropped and is_main:
        logger.warning("%d example(s) lack what the batch keys of %s need and are not used", dropped, objective.name)
    unused = [f for f in ("mcq_scope_swap", "mcq_affirmation_share") if getattr(config, f)]
    if unused and "mcq" not in objective.requires and is_main:
        logger.warning(
            "%s %s nothing: no objective of %s asks MCQ questions (negbench-mcq)",
            " and ".join("--" + f.replace("_", "-") for f in unused),
            "change" if len(unused) > 1 else "changes",
            " + ".join(config.objective),
        )
    train_set, val_set = (examples, []) if stream else split_by_image(examples, config.val_fraction, config.seed)
    model, trainable = apply_tuning(
        bundle.model,
        config.tuning,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_targets=config.lora_targets,
        lora_token_ids=word_token_ids(bundle.tokenizer, lora_token_words(config)),
        freeze=config.freeze,
        seed=config.seed,
    )
    if not trainable:
        raise ConfigError(f"--tuning {config.tuning} leaves no parameter to train")
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)

    plan = BatchPlan(len(train_set), config.batch_size, accelerator.num_processes, config.seed)
    micro_batches = stream.stream.steps_per_epoch() if stream else plan.micro_batches_per_epoch()
    accum = config.gradient_accumulation_steps
    steps_per_epoch = max(1, math.ceil(micro_batches / accum))
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * micro_batches / accum))
    eval_every, val_batches = eval_schedule(config, steps_per_epoch)
    mcq = McqEval.read(config, config.eval_mcq_max_rows or val_batches * config.batch_size) if config.eval_mcq else None

    # image features: from the store, embedding only what it lacks (each process a disjoint shard)
    images_root = Path(config.images or ".")
    paths = [] if stream else sorted({e.image for e in examples})  # streamed images are decoded by the workers
    check_images_exist(images_root, paths)
    if not config.cache_image_features:  # decoded only when a batch needs them: find what a cheap check can now
        from negation_plugins.data.io import check_image

        for path in paths:
            problem = check_image(images_root / path)
            if problem:
                raise ValueError(f"{images_root / path}: {problem} (a record image under --images)")
    clip = open_clip_model(model)
    clip.visual.eval()
    features_started = time.perf_counter()
    table, feature_counts = None, {"computed": 0, "from_store": 0}
    mcq_own = mcq.own(accelerator) if mcq else []
    if config.cache_image_features and not stream:  # the MCQ images' rows follow the training images'
        table, feature_counts = build_feature_table(
            accelerator,
            clip,
            bundle.preprocess,
            [images_root / p for p in paths] + (mcq.files if mcq else []),
            config.feature_store or default_root(),
            config.dataloader_num_workers,
            progress=config.progress and is_main,
        )
        if mcq:
            mcq.prepare(bundle.tokenizer, table[[len(paths) + i for i in mcq_own]], mcq_own)
    elif mcq:  # no store: this process embeds the images of its own MCQ rows once (the vision tower is frozen)
        own_files = [mcq.files[i] for i in mcq_own]
        own_features = (
            embed_files(clip, bundle.preprocess, own_files, config.dataloader_num_workers) if own_files else None
        )
        mcq.prepare(bundle.tokenizer, own_features, mcq_own)
    features_seconds = time.perf_counter() - features_started

    encoder = TextEncoder(model)
    optimizer = adamw(encoder, config.lr, config.weight_decay)
    # Stepped here once per optimizer step (accelerate's prepared scheduler steps once per process per step);
    # its state travels in STATE_FILE.
    schedule = warmup_cosine(optimizer, config.warmup_steps, total_steps, min_lr_rate=MIN_LR_RATE)
    encoder, optimizer = accelerator.prepare(encoder, optimizer)

    val_subset = val_set[: val_batches * config.batch_size]
    tokens_started = time.perf_counter()
    if stream:  # texts are tokenized where their batch is made
        tokens, tokenized = StreamTokens(bundle.tokenizer, record_texts(examples)), 0
    else:
        tokens = TokenCache(bundle.tokenizer)  # every text of the records, once; workers only look rows up
        tokenized = tokens.fill(record_texts(train_set + val_subset), accelerator)
    tokens_seconds = time.perf_counter() - tokens_started
    host_images = HostImages({p: i for i, p in enumerate(paths)}, table, bundle.preprocess, images_root)
    gather = accelerator if config.gather_negatives and accelerator.num_processes > 1 else None
    rank = accelerator.process_index
    train_data = (
        stream.dataset(tokens, bundle.preprocess, images_root)
        if stream
        else MicroBatches(train_set, plan, rank, keys, tokens, host_images, "train", config, gather is not None)
    )
    val_plan = EvalPlan(len(val_subset), config.batch_size, accelerator.num_processes)
    val_data = MicroBatches(val_subset, val_plan, rank, keys, tokens, host_images, "val", config)
    val_rounds = -(-val_plan.chunks() // accelerator.num_processes)
    val_loader = batch_loader(val_data, 0, val_rounds, config.dataloader_num_workers) if val_subset else None
    images = ImageSource(clip, table, accelerator.device)
    return Run(  # in the order of Run's fields
        config,
        accelerator,
        output,
        model,
        bundle,
        encoder,
        optimizer,
        schedule,
        objective,
        keys,
        images,
        tokens,
        train_data,
        val_loader,
        mcq,
        gather,
        total_steps,
        eval_every,
        {
            "train_examples": len(train_set),
            "val_examples": len(val_set),
            "dropped_examples": dropped,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "features_seconds": features_seconds,
            "tokenized_texts": {"texts": tokenized, "seconds": round(tokens_seconds, 2)},
            "image_features": feature_counts,
            "val_batches": val_batches,
        },
    )


def evaluate(run: Run, state: TrainState) -> dict:
    """Validation loss over fixed batches (the same every time) and MCQ accuracy over fixed rows, both split across
    processes and reduced; the time it takes is kept apart from the training time."""
    started = time.perf_counter()
    accelerator, results = run.accelerator, {}
    encoder = accelerator.unwrap_model(run.encoder)
    if run.val_loader is not None:
        total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
        with torch.no_grad():
            for item in run.val_loader:
                if item["n"] >= 2:
                    loss = run.objective(make_batch(encoder, item, run.images, run.tokens, run.keys))[0]
                    total += torch.stack([loss.double(), total.new_ones(())])
        loss_sum, batches = accelerator.reduce(total, reduction="sum").tolist()
        if batches:
            results["validation"] = {"loss": round(loss_sum / batches, 5)}
    if run.mcq is not None:
        results["mcq"] = run.mcq.accuracy(encoder, run.config.batch_size, accelerator)
    run.model.train()
    open_clip_model(run.model).visual.eval()
    state.validation_seconds += time.perf_counter() - started
    state.evaluations += 1
    return results


def train_step(run: Run, state: TrainState, loader) -> None:
    """One optimizer step over ``gradient_accumulation_steps`` micro-batches; its losses stay on the device until
    :func:`flush` (one host sync per ``--log-every`` steps)."""
    accelerator, accum = run.accelerator, run.config.gradient_accumulation_steps
    loss_sum, parts_sum = torch.zeros((), device=accelerator.device), {}
    for _ in range(accum):
        item = next(loader)
        with accelerator.accumulate(run.encoder), accelerator.autocast():
            loss, parts = run.objective(make_batch(run.encoder, item, run.images, run.tokens, run.keys, run.gather))
            accelerator.backward(loss)
            if accelerator.sync_gradients and run.config.grad_clip > 0:
                accelerator.clip_grad_norm_(run.encoder.parameters(), run.config.grad_clip)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        loss_sum = loss_sum + loss.detach().float() / accum
        for name, value in parts.items():
            parts_sum[name] = parts_sum.get(name, 0.0) + value.detach().float() / accum
        state.examples_seen += item["n"]
    clamp_logit_scale(run.model)
    state.step += 1
    state.pending.append((state.step, run.optimizer.param_groups[0]["lr"], loss_sum, parts_sum))
    run.schedule.step()


def flush(run: Run, state: TrainState, bar, extra: dict | None = None) -> None:
    """One host sync for all steps since the last flush: metrics.jsonl, trackers, history, progress bar."""
    if not state.pending:
        return
    values = torch.stack([torch.stack([loss, *parts.values()]) for _, _, loss, parts in state.pending]).tolist()
    for (number, lr, _, parts), row in zip(state.pending, values):
        record = {"step": number, "loss": round(row[0], 6), "lr": lr}
        record.update({f"loss/{k}": round(v, 6) for k, v in zip(parts, row[1:])})
        record.update((extra or {}).get(number, {}))
        state.history.append(record)
        if run.config.log_with != "none":
            run.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=number)
        if run.accelerator.is_main_process:
            with open(run.output / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
    bar.set_postfix(loss=f"{values[-1][0]:.4f}")
    state.pending.clear()


def keep_if_best(run: Run, state: TrainState, results: dict) -> None:
    """Track the best validation score (its weights, unless they are the final ones) and --patience."""
    current = score(results, run.config.select_by)
    if current is not None and (state.best is None or current > state.best):
        state.best, state.bad_evals = current, 0
        state.best_weights = trainable_state(run.model) if state.step < run.total_steps else None
    elif current is not None:
        state.bad_evals += 1
    state.stopped_early = bool(run.config.patience and state.bad_evals >= run.config.patience)


def report_mcq(run: Run, state: TrainState, results: dict) -> None:
    """--eval-mcq's affirmation, negation and hybrid accuracy in the log; a warning (log and results.json) when
    affirmation fell more than AFFIRMATION_DROP below its value before training."""
    from negation_plugins.benchmarks.mcq import TYPES

    mcq = results.get("mcq")
    if not mcq:
        return
    warning = affirmation_drop(state.results_before.get("mcq", {}), mcq, state.step)
    if warning:
        state.warnings.append(warning)
    if run.accelerator.is_main_process:
        logger.info("step %d --eval-mcq: %s", state.step, ", ".join(f"{t} {mcq.get(t)}" for t in TYPES))
        if warning:
            logger.warning(warning)


def affirmation_drop(before: dict, now: dict, step: int) -> str | None:
    """The warning for an MCQ affirmation accuracy more than AFFIRMATION_DROP below ``before``'s, else None."""
    start, current = before.get("affirmation"), now.get("affirmation")
    if start is None or current is None or current >= start - AFFIRMATION_DROP:
        return None
    return (
        f"step {step}: --eval-mcq affirmation accuracy {current} is more than {AFFIRMATION_DROP} below its {start} "
        "before training: negation is being bought with affirmation"
    )


def restore_best(run: Run, state: TrainState) -> None:
    named = dict(run.model.named_parameters())
    with torch.no_grad():
        for name, value in state.best_weights.items():
            named[name].copy_(value.to(named[name].device))


class Preemption:
    """``--save-on-signal``: the handler only notes the signal; after each step all processes agree (one all-reduce)
    whether any got one, so every process stops after the same step and saves one collective checkpoint. A second
    signal while saving changes nothing (the checkpoint is renamed into place only when complete)."""

    def __init__(self, names: str):
        import threading

        self.received: int | None = None
        self.previous = {}
        if threading.current_thread() is not threading.main_thread():  # Python installs handlers there only
            return
        for name in (n.strip().upper().removeprefix("SIG") for n in names.split(",") if n.strip()):
            number = getattr(signal, "SIG" + name)
            self.previous[number] = signal.signal(number, self.note)

    def note(self, number, frame) -> None:
        self.received = number

    def requested(self, accelerator) -> bool:
        if accelerator.num_processes == 1:
            return self.received is not None
        flag = torch.tensor([float(self.received is not None)], device=accelerator.device)
        return accelerator.reduce(flag, reduction="sum").item() > 0

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


class Preempted(Exception):
    """Raised by :func:`train` after the checkpoint of a preempted run is saved; ``main`` exits with
    REQUEUE_EXIT_CODE."""


def save_checkpoint(run: Run, state: TrainState) -> Path:
    """accelerate's full state (model, optimizer, RNG) plus ours, written to a temp folder then renamed, so a kill or
    a full disk mid-save never leaves a checkpoint that looks complete; then only the newest
    ``--checkpoints-total-limit`` complete ones stay (applied after the new one is complete). Every process saves its
    part, then all agree whether every part was written: a full disk on any process ends the run on all of them,
    with the earlier checkpoints intact."""
    from safetensors.torch import save_file

    accelerator, keep = run.accelerator, run.config.checkpoints_total_limit
    final = run.output / CHECKPOINTS / f"step-{state.step:07d}"
    tmp = run.output / CHECKPOINTS / f".tmp-step-{state.step:07d}"
    failure = None
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if state.best_weights is not None:
                save_file({k: v.contiguous() for k, v in state.best_weights.items()}, str(tmp / BEST_FILE))
            (tmp / STATE_FILE).write_text(json.dumps(state.saved(run.schedule)))
    except Exception as error:  # noqa: BLE001 - every process must reach the agreement below, whatever failed
        failure = error
    failed = torch.tensor([float(failure is not None)], device=accelerator.device)
    if accelerator.reduce(failed, reduction="sum").item() > 0:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        code = disk_full_errno(failure) if failure is not None else None
        if code is not None:
            raise DiskFullError(code, final) from None
        if failure is not None:
            raise failure
        raise RuntimeError(f"saving checkpoint {final} failed on another process")
    if accelerator.is_main_process:
        os.replace(tmp, final)
        complete = sorted(p for p in final.parent.glob("step-*") if (p / STATE_FILE).is_file())
        for old in complete[: -keep if keep else 0]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def resume(run: Run, checkpoint: Path) -> TrainState:
    """The state saved in ``checkpoint``; metrics.jsonl forgets the steps the interrupted run logged after it."""
    run.accelerator.load_state(str(checkpoint))
    saved = json.loads((checkpoint / STATE_FILE).read_text())
    run.schedule.load_state_dict(saved.pop("schedule"))
    state = TrainState(**saved)
    if (checkpoint / BEST_FILE).is_file():
        from safetensors.torch import load_file

        state.best_weights = load_file(str(checkpoint / BEST_FILE))
    if run.accelerator.is_main_process:
        kept = [line for line in _read_lines(run.output / METRICS_FILE) if json.loads(line)["step"] <= state.step]
        (run.output / METRICS_FILE).write_text("".join(line + "\n" for line in kept))
    return state


def train(config: TrainConfig) -> dict:
    """Run one fine-tuning; returns the results dict (also written to OUTPUT/results.json)."""
    from tqdm.auto import tqdm

    # ---- settings, data, model, features: everything that can fail does so before training ------------------
    config = resolve_defaults(config)
    validate(config)
    run = setup(config)
    accelerator, output, is_main = run.accelerator, run.output, run.accelerator.is_main_process

    # ---- where to start: a checkpoint, or step 0 after measuring the untrained model -----------------------------
    checkpoint = latest_checkpoint(output) if config.resume == "latest" else config.resume and Path(config.resume)
    if config.resume and checkpoint is None and is_main:
        logger.warning("--resume: no checkpoint in %s; starting from step 0", output / CHECKPOINTS)
    if is_main:
        output.mkdir(parents=True, exist_ok=True)
    if checkpoint is not None:
        state = resume(run, checkpoint)
    else:
        state = TrainState()
        state.results_before = evaluate(run, state)
        if is_main:
            (output / METRICS_FILE).write_text("")
    if config.log_with != "none":
        accelerator.init_trackers("finetune", config=_tracker_config(config))

    # ---- the loop: the DataLoader prepares micro-batches; this thread runs the model ---------------------------
    accum = config.gradient_accumulation_steps
    loader = iter(
        batch_loader(run.train_data, state.step * accum, run.total_steps * accum, config.dataloader_num_workers)
    )
    bar = tqdm(total=run.total_steps, initial=state.step, desc="fine-tuning", disable=not (config.progress and is_main))
    preemption = Preemption(config.save_on_signal)
    run.model.train()
    open_clip_model(run.model).visual.eval()
    started, validation_before, results = time.perf_counter(), state.validation_seconds, None
    try:
        while state.step < run.total_steps:
            train_step(run, state, loader)
            bar.update(1)
            # validate on schedule and at the end; keep the best weights; stop early on --patience
            results, extra = None, {}
            if state.step % run.eval_every == 0 or state.step == run.total_steps:
                results = evaluate(run, state)
                extra[state.step] = _flat(results)
                keep_if_best(run, state, results)
                report_mcq(run, state, results)
            every, last = config.checkpointing_steps, state.step == run.total_steps
            save = every and state.step % every == 0 and not last and not state.stopped_early
            preempted = not last and not state.stopped_early and preemption.requested(accelerator)
            if extra or save or preempted or state.step % config.log_every == 0 or last or state.stopped_early:
                flush(run, state, bar, extra)
            if save or preempted:
                saved = save_checkpoint(run, state)
            if preempted:  # main() exits with REQUEUE_EXIT_CODE
                raise Preempted(f"preempted at step {state.step}: saved {saved}; resume with --resume latest")
            if state.stopped_early:
                if is_main:
                    logger.info(
                        "early stop at step %d: %d validations without improvement", state.step, state.bad_evals
                    )
                break
    finally:
        preemption.restore()
        bar.close()
    train_seconds = time.perf_counter() - started - (state.validation_seconds - validation_before)

    # ---- best weights, final evaluation, outputs --------------------------------------------------------------
    accelerator.wait_for_everyone()
    if state.best_weights is not None:
        restore_best(run, state)
    # the last validation already measured these weights unless older best weights were restored
    results_after = evaluate(run, state) if state.best_weights is not None or results is None else results
    summary = summarize(run, state, results_after, train_seconds)
    if is_main:
        from .export import write_outputs

        write_outputs(output, model=run.model, bundle=run.bundle, config=config, summary=summary)
        if config.push_to_hub:
            from negation_plugins.hub import push

            summary["hub_commit"] = push(output, config.push_to_hub, private=config.hub_private, adapter_only=False)
    accelerator.wait_for_everyone()
    if config.log_with != "none":
        accelerator.end_training()
    return summary


def summarize(run: Run, state: TrainState, results_after: dict, train_seconds: float) -> dict:
    """results.json: what ran, how long each part took, the results before and after."""
    accelerator, facts = run.accelerator, run.facts
    # One fingerprint of the trained weights per process: equal on all ranks iff gradients were synced.
    fingerprint = torch.tensor(
        [sum(float(p.detach().double().sum()) for p in run.model.parameters() if p.requires_grad)],
        dtype=torch.float64,
        device=accelerator.device,
    )
    return {
        "rank_weight_fingerprints": accelerator.gather(fingerprint).tolist(),
        "steps": state.step,
        "total_steps": run.total_steps,
        "stopped_early": state.stopped_early,
        "best_score": state.best,
        "select_by": run.config.select_by,
        "train_examples": facts["train_examples"],
        "val_examples": facts["val_examples"],
        "dropped_examples": facts["dropped_examples"],
        "trainable_parameters": facts["trainable_parameters"],
        "train_seconds": round(train_seconds, 2),
        "seconds": {
            "train": round(train_seconds, 2),
            "validation": round(state.validation_seconds, 2),
            "features": round(facts["features_seconds"], 2),
        },
        "tokenized_texts": facts["tokenized_texts"],
        "image_features": facts["image_features"],
        "eval_every": run.eval_every,
        "val_batches": facts["val_batches"],
        "evaluations": state.evaluations,
        "examples_per_second": round(state.examples_seen / max(train_seconds, 1e-9), 2),
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "results_before": state.results_before,
        "results_after": results_after,
        "warnings": state.warnings,
        "config": run.config.to_dict(),
    }


def _forget_previous_run_settings() -> None:
    """accelerate keeps mixed-precision and accumulation settings in process-wide singletons; a second
    ``train()`` in the same Python process (benchmarks, tests, the demo) must not inherit the first one's.
    The distributed process group (PartialState) is kept."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def _remove_unfinished_output(output: Path) -> None:
    """A run that failed before its first checkpoint leaves nothing to resume: remove the folder it created
    (logs, metrics.jsonl) so no half-made output looks like a result. Only the main process deletes."""
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
        config, dry_run = parse_command_line(argv)
        if dry_run:
            print(json.dumps(config.to_dict(), indent=1))
            return 0
        output_existed = Path(config.output).exists()
        summary = train(config)
    except Preempted as stop:
        print(f"{stop} (exit code {REQUEUE_EXIT_CODE}: requeue)", file=sys.stderr)
        return REQUEUE_EXIT_CODE
    except (ConfigError, ValueError, FileNotFoundError, KeyError, DiskFullError) as error:
        print(f"error: {own_message(error)}", file=sys.stderr)  # one line, also for errors raised in loader workers
        if config is not None and not output_existed:
            _remove_unfinished_output(Path(config.output))
        return 2
    after = summary["results_after"]
    print(json.dumps({"output": config.output, "steps": summary["steps"], "results_after": after}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
