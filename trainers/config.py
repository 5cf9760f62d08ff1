"""The fine-tuning configuration: one dataclass, filled from a recipe, a YAML file and/or command-line flags.

Defaults <- ``--recipe NAME`` (trainers/recipes.py) <- YAML file <- flags. Without a recipe the defaults are safe for
a web-pretrained CLIP: the learning rate is the papers' 1e-6 for full/front tuning (1e-4 for LoRA adapters) unless
set. ``--recipe world`` is the best configuration measured on the synthetic world (``perf/compare_training.py``).
Everything that can be checked without training is checked in :func:`validate`, so a bad config fails in
seconds with a message naming the bad setting.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml

from negation_plugins.textfiles import read_text

DEFAULT_OBJECTIVES = ("negbench-mcq", "clip:0.5")
DEFAULT_LORA_TARGETS = "attn,mlp"
NEGATION_TOKENS = "negation"  # --lora-trainable-tokens: every single-word negation cue of negation_plugins.lexicon
TUNING_PATTERN = re.compile(r"^(full|lora|front:(\d+)-(\d+))$")
NEGATION_MODES = ("records", "on-the-fly")
MIXED_PRECISION = ("no", "bf16", "fp16")
SAFE_LR = {"full": 1e-6, "front": 1e-6, "lora": 1e-4}  # full: NegationCLIP/Omni-NegCLIP; LoRA adapters start at 0
SELECT_BY = ("val-loss", "mcq")
TRACKERS = ("tensorboard", "wandb", "all", "none")
ALIASES = {  # diffusers training examples' names for the same settings
    "checkpointing_steps": ("--save-every",),
    "resume": ("--resume-from-checkpoint", "--resume_from_checkpoint"),
    "log_with": ("--report-to",),
}


class ConfigError(ValueError):
    """A setting that cannot work; raised before any training starts."""


def setting(default, help: str):
    """A config field and its flag's help text: the flags are generated from the fields (:func:`build_parser`)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    recipe: str | None = setting(
        None, "fill settings from a named preset (see `negclip recipes`); flags and --config still override it"
    )
    model: str = setting(
        "", "CLIP to fine-tune: open_clip name, hf-hub:ORG/REPO, local-dir:PATH, NegationCLIP .pth, transformers folder"
    )
    train: str = setting(
        "",
        "negation records JSONL, NegationCLIP updated_caption JSON, or COCO captions JSON (with --negation on-the-fly)",
    )
    images: str = setting("", "folder the records' image paths are relative to")
    output: str = setting("", "folder for the trained model, adapters, model card, logs and checkpoints")
    instances: str | None = setting(None, "COCO instances JSON (objects per image) for --negation on-the-fly")
    negation: str = setting(
        "records", "records: negated captions come from --train; on-the-fly: TNG-CLIP templates inside the step"
    )
    objective: list[str] = setting(
        list(DEFAULT_OBJECTIVES),
        "NAME[:WEIGHT], repeatable (see `negclip plugins`); default: " + " + ".join(DEFAULT_OBJECTIVES),
    )
    mcq_affirmation_share: float = setting(
        0.0,
        "negbench-mcq: share of training questions that are affirmation questions (the caption against copies "
        "naming an absent object instead of a present one); above 0 negation questions also get such a distractor",
    )
    mcq_scope_swap: bool = setting(
        False,
        "negbench-mcq: each negation question also offers its true caption with the negated (absent) object "
        "replaced by a present one, so the answer turns on which object is negated",
    )
    tuning: str = setting(
        "full",
        "full (whole text tower), lora (peft adapters on the text tower), front:A-B (text layers A..B inclusive)",
    )
    lora_rank: int = setting(16, "LoRA rank r")
    lora_alpha: float = setting(32.0, "LoRA alpha (scale = alpha / r)")
    lora_targets: str = setting(
        DEFAULT_LORA_TARGETS, "comma list of attn, mlp, or regexes over the text tower's module names"
    )
    lora_trainable_tokens: str = setting(
        "",
        "comma list of words whose token-embedding rows train beside the LoRA adapters (peft trainable tokens), or "
        f"{NEGATION_TOKENS!r} for the lexicon's negation words: for words the base model never learned",
    )
    freeze: str = setting("", "comma list of text-tower parameters kept frozen under full/front tuning (e.g. ln_final)")
    max_steps: int | None = setting(None, "optimizer steps (overrides --epochs)")
    epochs: float = setting(5.0, "passes over the training examples (fractions allowed)")
    batch_size: int = setting(64, "examples per process per micro-batch")
    lr: float | None = setting(
        None, "peak learning rate (AdamW, linear warmup, cosine decay); default 1e-6 (full/front) or 1e-4 (lora)"
    )
    weight_decay: float = setting(0.01, "AdamW weight decay on matrices")
    warmup_steps: int = setting(20, "linear warmup steps")
    grad_clip: float = setting(1.0, "max gradient norm (0 disables)")
    seed: int = setting(0, "seed for the split, batches, negation sampling and LoRA init")
    val_fraction: float = setting(0.1, "share of images held out for validation (0 disables validation)")
    eval_every: int | None = setting(None, "validate every N optimizer steps (default: once per epoch)")
    val_max_batches: int | None = setting(
        None,
        "validation batches per evaluation, split across processes (default: eval-every // 10, at most 50: "
        "validation stays under ~5%% of the training time)",
    )
    eval_mcq: str | None = setting(
        None, "NegBench-format MCQ CSV evaluated before/after training and at each validation"
    )
    eval_mcq_images: str | None = setting(None, "image root of --eval-mcq (default: --images)")
    eval_mcq_max_rows: int | None = setting(
        None,
        "--eval-mcq rows scored per evaluation, evenly spread over the CSV and split across processes (default: "
        "val-max-batches x batch-size, like validation)",
    )
    select_by: str = setting("val-loss", "keep the best checkpoint by val-loss or by mcq accuracy")
    patience: int | None = setting(None, "stop after this many validations without improvement")
    mixed_precision: str | None = setting(
        None, "no, bf16 or fp16 (fp16 needs a GPU); default: what `accelerate launch`/`accelerate config` say"
    )
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step")
    checkpointing_steps: int = setting(
        500, "write a resumable accelerate checkpoint every N steps into OUTPUT/checkpoints (0: never)"
    )
    checkpoints_total_limit: int | None = setting(None, "keep only the newest N checkpoints (default: all)")
    resume: str | None = setting(
        None, "latest (newest checkpoint in OUTPUT/checkpoints; the default for a bare --resume) or a checkpoint PATH"
    )
    save_on_signal: str = setting(
        "TERM,USR1",
        "comma list of signals (TERM, USR1, ...) on which every process finishes its step, a resumable checkpoint is "
        "saved and the run exits with code 75 (requeue; resume with --resume latest); empty: none",
    )
    gradient_checkpointing: bool = setting(
        False, "recompute the text tower's activations in backward (less memory, ~30%% more compute)"
    )
    gather_negatives: bool = setting(
        False,
        "contrastive losses and TNG hard-object mining over the global batch of all processes (open_clip's "
        "gather_with_grad) instead of each process's own; off by default",
    )
    cache_image_features: bool = setting(
        True,
        "use the image-feature store: each image embedded once by the frozen vision tower, kept on disk and "
        "reused by later runs (default on; off: images decoded and embedded every step)",
    )
    feature_store: str | None = setting(
        None,
        "folder of the image-feature store (default: $NEGCLIP_FEATURE_STORE or ~/.cache/negation-"
        "plugins/image-features); must be visible to every process",
    )
    dataloader_num_workers: int | None = setting(
        None,
        "DataLoader worker processes preparing batches (MCQ options, token lookup, on-the-fly negation, image "
        "decoding); 0: in the training process. Default: 2 with a GPU; on CPU the cores the training processes' "
        "torch threads leave free, at most 2 (0 on a 2-core machine, where a worker only slows the model down)",
    )
    log_every: int = setting(
        10, "write losses to metrics.jsonl and the trackers every N steps (one host sync per N steps)"
    )
    push_to_hub: str | None = setting(None, "after training, push OUTPUT to this Hub repo id")
    hub_private: bool = setting(False, "create the Hub repo as private")
    export_transformers: bool = setting(True, "also write transformers CLIPModel / CLIPTextModel folders")
    log_with: str = setting("tensorboard", "accelerate tracker: tensorboard, wandb, all or none")
    progress: bool = setting(True, "show a tqdm progress bar on the main process")

    def to_dict(self) -> dict:
        return asdict(self)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainers.finetune",
        description="Fine-tune a CLIP text encoder for negation (run with `accelerate launch -m trainers.finetune`).",
    )
    parser.add_argument("--config", help="YAML file with any of the settings below (flags override it)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved settings as JSON and exit (loads no data or model)"
    )
    for f in fields(TrainConfig):
        flags = ["--" + f.name.replace("_", "-"), *ALIASES.get(f.name, ())]
        flag = flags[0]
        help_text = f.metadata["help"]
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.name == "resume":
            parser.add_argument(*flags, dest=f.name, nargs="?", const="latest", default=None, help=help_text)
        elif f.name == "objective":
            parser.add_argument(
                flag, dest=f.name, action="append", default=None, metavar="NAME[:WEIGHT]", help=help_text
            )
        else:
            kind = {"int": int, "float": float}.get(f.type.removesuffix(" | None"), str)
            parser.add_argument(*flags, dest=f.name, type=kind, default=None, help=help_text)
    return parser


def parse_command_line(argv: list[str] | None = None) -> tuple[TrainConfig, bool]:
    """Defaults <- recipe <- YAML (--config) <- flags; returns (config, --dry-run)."""
    args = vars(build_parser().parse_args(argv))
    dry_run = args.pop("dry_run")
    values: dict = {}
    config_path = args.pop("config")
    if config_path:
        values.update(load_yaml(config_path))
    values.update({k: v for k, v in args.items() if v is not None})
    return build_config(**values), dry_run


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    return parse_command_line(argv)[0]


def build_config(recipe: str | None = None, **settings) -> TrainConfig:
    """Defaults <- the named recipe <- ``settings``, with tuning-dependent defaults filled in."""
    from .recipes import RECIPES

    if recipe and recipe not in RECIPES:
        raise ConfigError(f"--recipe {recipe!r}: unknown; known recipes: {', '.join(RECIPES)}")
    values = RECIPES[recipe].values() if recipe else {}
    values.update(settings)
    return resolve_defaults(TrainConfig(recipe=recipe, **values))


def resolve_defaults(config: TrainConfig) -> TrainConfig:
    """Fill the settings whose default depends on others or on the machine: the learning rate on the tuning mode,
    the DataLoader workers on the device and free CPU cores."""
    if config.lr is None:
        config = replace(config, lr=SAFE_LR.get(config.tuning.strip().split(":")[0], SAFE_LR["full"]))
    if config.dataloader_num_workers is None:
        config = replace(config, dataloader_num_workers=default_workers())
    return config


def default_workers() -> int:
    """2 with a GPU (the model runs there; workers use the CPU cores). On CPU the model's torch threads already
    use the cores: a worker would take one from them (measured in perf/bench_scale.py), so only free cores get one."""
    import torch

    if torch.cuda.is_available():
        return 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = torch.get_num_threads() * int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(2, cores - busy))


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {unknown}; known: {sorted(known)}")
    if isinstance(data.get("objective"), str):
        data["objective"] = [data["objective"]]
    if isinstance(data.get("resume"), bool):  # `resume: true` as in older configs
        data["resume"] = "latest" if data["resume"] else None
    return data


def parse_tuning(tuning: str) -> tuple[str, tuple[int, int] | None]:
    """``"front:0-5"`` -> ("front", (0, 5)); layer numbers are inclusive, as in Omni-NegCLIP's "layers 0-5"."""
    match = TUNING_PATTERN.match(tuning.strip())
    if not match:
        raise ConfigError(f"--tuning {tuning!r}: expected full, lora or front:A-B (e.g. front:0-5)")
    if match.group(2) is None:
        return match.group(1), None
    start, end = int(match.group(2)), int(match.group(3))
    if start > end:
        raise ConfigError(f"--tuning {tuning!r}: range start {start} is after its end {end}")
    return "front", (start, end)


CHECKPOINTS = "checkpoints"  # OUTPUT/checkpoints/step-NNNNNNN, complete when STATE_FILE is in it
STATE_FILE = "trainer_state.json"


def lora_token_words(config: TrainConfig) -> list[str]:
    """The words of --lora-trainable-tokens (``negation``: the lexicon's single-word negation cues)."""
    if config.lora_trainable_tokens.strip() == NEGATION_TOKENS:
        from negation_plugins.lexicon import NEGATION_WORDS

        return sorted(NEGATION_WORDS)
    return [word.strip() for word in config.lora_trainable_tokens.split(",") if word.strip()]


def latest_checkpoint(output: Path) -> Path | None:
    folder = output / CHECKPOINTS
    done = sorted(p for p in folder.glob("step-*") if (p / STATE_FILE).is_file()) if folder.is_dir() else []
    return done[-1] if done else None


def validate(config: TrainConfig) -> None:
    """Checks that need no model or data; the trainer checks model/data facts right after loading them."""
    from negation_plugins.checks import output_dir

    for name in ("model", "train", "output"):
        if not getattr(config, name):
            raise ConfigError(f"--{name} is required")
    output_dir(config.output, "--output")
    if not Path(config.train).is_file():
        raise ConfigError(f"--train {config.train}: file does not exist")
    if config.images and not Path(config.images).is_dir():
        raise ConfigError(f"--images {config.images}: folder does not exist")
    if config.negation not in NEGATION_MODES:
        raise ConfigError(f"--negation {config.negation!r}: expected one of {', '.join(NEGATION_MODES)}")
    if config.instances and not Path(config.instances).is_file():
        raise ConfigError(f"--instances {config.instances}: file does not exist")
    if config.mixed_precision is not None and config.mixed_precision not in MIXED_PRECISION:
        raise ConfigError(f"--mixed-precision {config.mixed_precision!r}: expected one of {', '.join(MIXED_PRECISION)}")
    if config.log_with not in TRACKERS:
        raise ConfigError(f"--report-to/--log-with {config.log_with!r}: expected one of {', '.join(TRACKERS)}")
    earlier = latest_checkpoint(Path(config.output))
    if config.resume is None and earlier is not None:
        raise ConfigError(
            f"--output {config.output}: holds checkpoints of an earlier run (newest {earlier.name}); pass --resume "
            "latest to continue it, or another --output"
        )
    if config.resume not in (None, "latest") and not (Path(config.resume) / STATE_FILE).is_file():
        raise ConfigError(
            f"--resume {config.resume}: not a complete checkpoint folder (no trainer_state.json); "
            "use latest or OUTPUT/checkpoints/step-NNNNNNN"
        )
    for name in (n.strip().upper().removeprefix("SIG") for n in config.save_on_signal.split(",") if n.strip()):
        if not hasattr(signal, "SIG" + name) or name in ("KILL", "STOP"):
            raise ConfigError(f"--save-on-signal {config.save_on_signal!r}: {name} is not a signal a process can catch")
    if config.checkpoints_total_limit is not None and config.checkpoints_total_limit < 1:
        raise ConfigError(f"--checkpoints-total-limit must be >= 1, got {config.checkpoints_total_limit}")
    if config.checkpointing_steps < 0:
        raise ConfigError(f"--checkpointing-steps must be >= 0, got {config.checkpointing_steps}")
    if config.select_by not in SELECT_BY:
        raise ConfigError(f"--select-by {config.select_by!r}: expected one of {', '.join(SELECT_BY)}")
    if config.select_by == "mcq" and not config.eval_mcq:
        raise ConfigError("--select-by mcq needs --eval-mcq CSV")
    if config.eval_mcq and not Path(config.eval_mcq).is_file():
        raise ConfigError(f"--eval-mcq {config.eval_mcq}: file does not exist")
    if config.eval_mcq_images and not Path(config.eval_mcq_images).is_dir():
        raise ConfigError(f"--eval-mcq-images {config.eval_mcq_images}: folder does not exist")
    mode, _ = parse_tuning(config.tuning)
    if config.freeze and mode == "lora":
        raise ConfigError("--freeze applies to full or front:A-B tuning; LoRA already keeps the base weights frozen")
    if config.lora_trainable_tokens and mode != "lora":
        raise ConfigError(
            f"--lora-trainable-tokens applies to --tuning lora; --tuning {config.tuning} trains the whole token "
            "embedding already"
        )
    if config.lora_trainable_tokens and not lora_token_words(config):
        raise ConfigError(f"--lora-trainable-tokens {config.lora_trainable_tokens!r} names no word")
    positive = {
        "batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "log_every": config.log_every,
        "lora_rank": config.lora_rank,
    }
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("eval_every", "val_max_batches", "eval_mcq_max_rows"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    if config.dataloader_num_workers is not None and config.dataloader_num_workers < 0:
        raise ConfigError(f"--dataloader-num-workers must be >= 0, got {config.dataloader_num_workers}")
    if config.max_steps is not None and config.max_steps < 1:
        raise ConfigError(f"--max-steps must be >= 1, got {config.max_steps}")
    if config.max_steps is None and not config.epochs > 0:
        raise ConfigError(f"--epochs must be > 0, got {config.epochs}")
    if config.lr is None or not config.lr > 0:
        raise ConfigError(f"--lr must be > 0, got {config.lr}")
    if not 0 <= config.mcq_affirmation_share <= 1:
        raise ConfigError(f"--mcq-affirmation-share must be in [0, 1], got {config.mcq_affirmation_share}")
    if not 0 <= config.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {config.val_fraction}")
    if config.patience is not None and config.patience < 1:
        raise ConfigError(f"--patience must be >= 1, got {config.patience}")
    if not config.objective:
        raise ConfigError("at least one --objective is needed")
    if config.push_to_hub:
        from huggingface_hub import get_token

        if get_token() is None:
            raise ConfigError(f"--push-to-hub {config.push_to_hub}: no Hub token; set HF_TOKEN or `hf auth login`")
