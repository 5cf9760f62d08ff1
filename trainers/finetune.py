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
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

from negation_plugins.atomic import DiskFullError
from negation_plugins.checks import own_message

from .batches import BatchPlan, Example, absent_object_index, load_examples, split_by_image, usable_examples
from .config import (
    CHECKPOINTS,
    STATE_FILE,
    ConfigError,
    TrainConfig,
    latest_checkpoint,
    lora_token_words,
    parse_command_line,
    resolve_defaults,
    validate,
)
from .data import (
    ON_THE_FLY_KEYS,
    EvalPlan,
    MicroBatches,
    TokenCache,
    batch_loader,
    negate_on_the_fly,
    on_the_fly_seed,
    record_texts,
)
from .features import autocast_bf16, build_feature_table, default_root, embed_files
from .optim import adamw, warmup_cosine
from .tuning import apply_tuning, clamp_logit_scale, enable_gradient_checkpointing, open_clip_model, word_token_ids

logger = logging.getLogger("trainers.finetune")

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


def make_batch(
    encoder, host: dict, images: ImageSource, tokens: TokenCache, otf_seed: int, device, gather=None
) -> dict:
    """Embed everything the objectives need from a DataLoader item; all texts go through ONE encoder forward.

    Items without a feature table carry raw captions for TNG's negation, done here after embedding the images.
    With ``gather`` (an Accelerator, for ``--gather-negatives``) those hard objects are mined over every process's
    batch and the returned rows are the global batch (see :func:`gather_batch`)."""
    batch = {"image": images(host["images"])}
    if "distractors" in host:
        batch["distractor_image"] = images(host["distractors"])
    layout, token_ids = list(host["layout"]), host["tokens"]
    if "captions" in host:
        captions, objects, embeds = host["captions"], host["objects"], batch["image"]
        if gather is not None:
            from accelerate.utils import gather_object

            captions, objects, embeds = gather_object(captions), gather_object(objects), gather.gather(embeds)
        generated = negate_on_the_fly(captions, embeds, objects, otf_seed, tokens.context_length)
        own = slice(None) if gather is None else _own_rows(gather, host["n"])
        new = [t for key in ON_THE_FLY_KEYS for t in generated[key][own]]
        layout += [(key, host["n"]) for key in ON_THE_FLY_KEYS]
        token_ids = torch.cat([token_ids, tokens(new)])
    features, logit_scale = encoder(token_ids.to(device, non_blocking=True))
    batch.update(split_text_features(features.float(), layout, host.get("mcq_answer"), host["n"]))
    batch["logit_scale"] = logit_scale.float()
    return batch if gather is None else gather_batch(batch, gather)


def split_text_features(features: torch.Tensor, layout: list[tuple[str, int]], answers, n_examples: int) -> dict:
    """Undo the one-forward flattening: rows per text key (``layout``: key and row count, in order), MCQ options as
    (examples, options, dim) with answers."""
    parts, start = {}, 0
    for key, count in layout:
        parts[key] = features[start : start + count]
        start += count
    if "mcq" in parts:
        parts["mcq"] = parts["mcq"].reshape(n_examples, -1, features.shape[-1])
        parts["mcq_answer"] = torch.as_tensor(answers, device=features.device)
    return parts


PER_EXAMPLE_KEYS = (
    "image",
    "caption",
    "absence",
    "presence",
    "hybrid",
    "full",
    "mcq",
    "mcq_answer",
    "distractor_image",
)


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

    Gradients: the loss must be backpropagated times ``num_processes`` (see the loop): each process's gradient then
    covers its own rows' share of the global loss, and DDP's average over processes gives exactly the gradient of
    the single-process loss on the concatenated batch. The logit scale appears whole on every process, so its
    gradient is divided by ``num_processes`` here to cancel that factor."""
    out = {k: gather_with_grad(v, accelerator) if k in PER_EXAMPLE_KEYS else v for k, v in batch.items()}
    world = accelerator.num_processes
    out["logit_scale"] = batch["logit_scale"] / world + (batch["logit_scale"] * (1 - 1 / world)).detach()
    return out


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


def evaluate(state, config, val_loader, make, encoder, accelerator) -> dict:
    """Validation loss over fixed batches (the same every time) and MCQ accuracy over fixed rows, both split across
    processes and reduced."""
    results = {}
    model = state["model"]
    if val_loader is not None:
        total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
        with torch.no_grad():
            for number, host in enumerate(val_loader):
                if host["n"] >= 2:
                    total += torch.stack([state["objective"](make(host, number))[0].double(), total.new_ones(())])
        loss_sum, batches = accelerator.reduce(total, reduction="sum").tolist()
        if batches:
            results["validation"] = {"loss": round(loss_sum / batches, 5)}
    if state["mcq"] is not None:
        results["mcq"] = state["mcq"].accuracy(encoder, config.batch_size, accelerator)
    model.train()
    open_clip_model(model).visual.eval()
    return results


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


def train(config: TrainConfig) -> dict:
    """Run one fine-tuning; returns the results dict (also written to OUTPUT/results.json)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from negation_plugins import load_clip
    from negation_plugins.losses import parse_objectives

    # ---- settings and everything that can fail before training -------------------------------------------------
    config = resolve_defaults(config)
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
    if torch.cuda.is_available():  # TF32 matmuls on Ampere+ (diffusers' --allow_tf32; fp32 elsewhere unchanged)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    gather = accelerator if config.gather_negatives and accelerator.num_processes > 1 else None

    examples = load_examples(config.train, config.negation, config.images or None, config.instances)
    examples, dropped = usable_examples(examples, requires, config.train)
    bundle = load_clip(config.model, device=accelerator.device)
    check_model_and_tokenizer(bundle, examples)
    if dropped and is_main:
        logger.warning("%d example(s) lack the negation kinds %s needs and are not used", dropped, objective.name)
    unused = [f for f in ("mcq_scope_swap", "mcq_affirmation_share") if getattr(config, f)]
    if unused and "mcq" not in requires and is_main:
        logger.warning(
            "%s %s nothing: no objective of %s asks MCQ questions (negbench-mcq)",
            " and ".join("--" + f.replace("_", "-") for f in unused),
            "change" if len(unused) > 1 else "changes",
            " + ".join(config.objective),
        )
    train_set, val_set = split_by_image(examples, config.val_fraction, config.seed)
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
    accum = config.gradient_accumulation_steps
    steps_per_epoch = max(1, math.ceil(plan.micro_batches_per_epoch() / accum))
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * plan.micro_batches_per_epoch() / accum))
    eval_every, val_batches = eval_schedule(config, steps_per_epoch)
    mcq = McqEval.read(config, config.eval_mcq_max_rows or val_batches * config.batch_size) if config.eval_mcq else None

    # ---- image features: from the store, embedding only what it lacks (each process a disjoint shard) ---------
    images_root = Path(config.images or ".")
    paths = sorted({e.image for e in examples})
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
    if config.cache_image_features:  # the MCQ images' rows follow the training images'
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
    images = ImageSource(clip, table, accelerator.device)

    encoder = TextEncoder(model)
    optimizer = adamw(encoder, config.lr, config.weight_decay)
    # Stepped here once per optimizer step (accelerate's prepared scheduler steps once per process per step);
    # its state travels in STATE_FILE (plain JSON, no pickle to load on resume).
    schedule = warmup_cosine(optimizer, config.warmup_steps, total_steps, min_lr_rate=MIN_LR_RATE)
    encoder, optimizer = accelerator.prepare(encoder, optimizer)
    device = accelerator.device
    state = {"model": model, "objective": objective, "mcq": mcq}

    val_subset = val_set[: val_batches * config.batch_size]
    tokens_started = time.perf_counter()
    tokens = TokenCache(bundle.tokenizer)  # every text of the records, once; workers only look rows up
    tokenized = tokens.fill(record_texts(train_set + val_subset), accelerator)
    tokens_seconds = time.perf_counter() - tokens_started

    def micro_batches(split_examples, split_plan, split, gather_split):
        return MicroBatches(
            split_examples,
            split_plan,
            accelerator.process_index,
            requires,
            tokens,
            config.seed,
            split,
            {p: i for i, p in enumerate(paths)},
            None if table is None else table,
            bundle.preprocess,
            images_root,
            absent_object_index(split_examples),
            gather=gather_split,
            mcq_affirmation_share=config.mcq_affirmation_share,
            mcq_scope_swap=config.mcq_scope_swap,
        )

    train_data = micro_batches(train_set, plan, "train", gather is not None)
    val_plan = EvalPlan(len(val_subset), config.batch_size, accelerator.num_processes)
    val_rounds = -(-val_plan.chunks() // accelerator.num_processes)
    val_loader = (  # the same batches every validation: workers (if any) stay up between validations
        batch_loader(micro_batches(val_subset, val_plan, "val", False), 0, val_rounds, config.dataloader_num_workers)
        if val_subset
        else None
    )
    timer = {"validation": 0.0, "evaluations": 0}

    def run_evaluation() -> dict:
        started = time.perf_counter()
        unwrapped = accelerator.unwrap_model(encoder)

        def make_eval(host, number):
            return make_batch(unwrapped, host, images, tokens, on_the_fly_seed(config.seed + 10_000, number, 0), device)

        results = evaluate(state, config, val_loader, make_eval, unwrapped, accelerator)
        timer["validation"] += time.perf_counter() - started
        timer["evaluations"] += 1
        return results

    # ---- resume -----------------------------------------------------------------------------------------------
    step, best, best_state, bad_evals, history = 0, None, None, 0, []
    checkpoint = latest_checkpoint(output) if config.resume == "latest" else config.resume and Path(config.resume)
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
            output.mkdir(parents=True, exist_ok=True)
            kept = [line for line in _read_lines(output / METRICS_FILE) if json.loads(line)["step"] <= step]
            (output / METRICS_FILE).write_text("".join(line + "\n" for line in kept))
    else:
        results_before = run_evaluation()
        if is_main:
            output.mkdir(parents=True, exist_ok=True)
            (output / METRICS_FILE).write_text("")
    if config.log_with != "none":
        accelerator.init_trackers("finetune", config=_tracker_config(config))

    # ---- the loop: the DataLoader prepares micro-batches; this thread runs the model ---------------------------
    pending: list[tuple[int, float, torch.Tensor, dict]] = []  # per-step losses kept on the device until a flush

    def flush(extra: dict | None = None) -> None:
        """One host sync for all steps since the last flush: metrics.jsonl, trackers, history, progress bar."""
        if not pending:
            return
        values = torch.stack([torch.stack([loss, *parts.values()]) for _, _, loss, parts in pending]).tolist()
        for (number, lr, _, parts), row in zip(pending, values):
            record = {"step": number, "loss": round(row[0], 6), "lr": lr}
            record.update({f"loss/{k}": round(v, 6) for k, v in zip(parts, row[1:])})
            record.update((extra or {}).get(number, {}))
            history.append(record)
            if config.log_with != "none":
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=number)
            if is_main:
                with open(output / METRICS_FILE, "a") as f:
                    f.write(json.dumps(record) + "\n")
        bar.set_postfix(loss=f"{values[-1][0]:.4f}")
        pending.clear()

    start_time, validation_before_loop, results = time.perf_counter(), timer["validation"], None
    examples_seen = 0
    bar = tqdm(total=total_steps, initial=step, desc="fine-tuning", disable=not (config.progress and is_main))
    model.train()
    clip.visual.eval()
    stopped_early = False
    loader = iter(batch_loader(train_data, step * accum, total_steps * accum, config.dataloader_num_workers))
    while step < total_steps:
        loss_sum, parts_sum = torch.zeros((), device=device), {}
        for micro in range(accum):
            micro_batch = step * accum + micro
            host = next(loader)
            with accelerator.accumulate(encoder), accelerator.autocast():
                rank_seed = 0 if gather else accelerator.process_index  # gathered: one negation of the global batch
                batch = make_batch(
                    encoder, host, images, tokens, on_the_fly_seed(config.seed, micro_batch, rank_seed), device, gather
                )
                loss, parts = objective(batch)
                accelerator.backward(loss * accelerator.num_processes if gather else loss)
                if accelerator.sync_gradients and config.grad_clip > 0:
                    accelerator.clip_grad_norm_(encoder.parameters(), config.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum = loss_sum + loss.detach().float() / accum
            for name, value in parts.items():
                parts_sum[name] = parts_sum.get(name, 0.0) + value.detach().float() / accum
            examples_seen += host["n"]
        clamp_logit_scale(model)
        step += 1
        pending.append((step, optimizer.param_groups[0]["lr"], loss_sum, parts_sum))
        schedule.step()
        bar.update(1)

        extra, results = {}, None
        if step % eval_every == 0 or step == total_steps:
            results = run_evaluation()
            extra[step] = _flat(results)
            current = score(results, config.select_by)
            if current is not None and (best is None or current > best):
                best, best_state, bad_evals = current, trainable_state(model), 0
                best_state = None if step == total_steps else best_state  # the final weights are the best
            elif current is not None:
                bad_evals += 1
            if config.patience and bad_evals >= config.patience:
                stopped_early = True
        every = config.checkpointing_steps
        save = every and step % every == 0 and step < total_steps and not stopped_early
        if extra or save or step % config.log_every == 0 or step == total_steps or stopped_early:
            flush(extra)
        if save:
            save_checkpoint(
                accelerator,
                output,
                step,
                config.checkpoints_total_limit,
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
    train_seconds = time.perf_counter() - start_time - (timer["validation"] - validation_before_loop)

    # ---- best weights, final evaluation, outputs --------------------------------------------------------------
    accelerator.wait_for_everyone()
    if best_state is not None:
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in best_state.items():
                named[name].copy_(value.to(named[name].device))
    # the last validation already measured these weights unless older best weights were restored
    results_after = run_evaluation() if best_state is not None or results is None else results
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
        "seconds": {
            "train": round(train_seconds, 2),
            "validation": round(timer["validation"], 2),
            "features": round(features_seconds, 2),
        },
        "tokenized_texts": {"texts": tokenized, "seconds": round(tokens_seconds, 2)},
        "image_features": feature_counts,
        "eval_every": eval_every,
        "val_batches": val_batches,
        "evaluations": timer["evaluations"],
        "examples_per_second": round(examples_seen / max(train_seconds, 1e-9), 2),
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
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


def save_checkpoint(accelerator, output: Path, step: int, keep: int | None, trainer_state: dict, best_state) -> None:
    """accelerate's full state (model, optimizer, RNG) plus ours, written to a temp folder then renamed, so a
    kill mid-save never leaves a checkpoint that looks complete; then only the newest ``keep`` complete ones stay
    (diffusers' --checkpoints_total_limit, applied after the new one is complete)."""
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
        complete = sorted(p for p in final.parent.glob("step-*") if (p / STATE_FILE).is_file())
        for old in complete[: -keep if keep else 0]:
            shutil.rmtree(old)
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
        config, dry_run = parse_command_line(argv)
        if dry_run:
            print(json.dumps(config.to_dict(), indent=1))
            return 0
        output_existed = Path(config.output).exists()
        summary = train(config)
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
