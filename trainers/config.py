"""The fine-tuning configuration: one dataclass, filled from a YAML file and/or command-line flags.

Flags override the YAML file; the YAML file overrides the defaults. The defaults are the best configuration
measured on the synthetic world (see ``perf/compare_objectives.py``), so the minimal call
``python -m trainers.finetune --model SPEC --train FILE --images DIR --output DIR`` already works well.
Everything that can be checked without training is checked in :func:`validate`, so a bad config fails in
seconds with a message naming the bad setting.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

DEFAULT_OBJECTIVES = ("negbench-mcq", "clip:0.5")
DEFAULT_LORA_TARGETS = "attn,mlp"
TUNING_PATTERN = re.compile(r"^(full|lora|front:(\d+)-(\d+))$")
NEGATION_MODES = ("records", "on-the-fly")
MIXED_PRECISION = ("no", "bf16", "fp16")
SELECT_BY = ("val-loss", "mcq")


class ConfigError(ValueError):
    """A setting that cannot work; raised before any training starts."""


def setting(default, help: str):
    """A config field and its flag's help text: the flags are generated from the fields (:func:`build_parser`)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
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
    tuning: str = setting(
        "full",
        "full (whole text tower), lora (peft adapters on the text tower), front:A-B (text layers A..B inclusive)",
    )
    lora_rank: int = setting(16, "LoRA rank r")
    lora_alpha: float = setting(32.0, "LoRA alpha (scale = alpha / r)")
    lora_targets: str = setting(
        DEFAULT_LORA_TARGETS, "comma list of attn, mlp, or regexes over the text tower's module names"
    )
    max_steps: int | None = setting(None, "optimizer steps (overrides --epochs)")
    epochs: float = setting(5.0, "passes over the training examples (fractions allowed)")
    batch_size: int = setting(64, "examples per process per micro-batch")
    lr: float = setting(3e-3, "peak learning rate (AdamW; linear warmup from 0, then cosine decay to a tenth of it)")
    weight_decay: float = setting(0.01, "AdamW weight decay on matrices")
    warmup_steps: int = setting(20, "linear warmup steps")
    grad_clip: float = setting(1.0, "max gradient norm (0 disables)")
    seed: int = setting(0, "seed for the split, batches, negation sampling and LoRA init")
    val_fraction: float = setting(0.1, "share of images held out for validation (0 disables validation)")
    eval_every: int = setting(50, "validate every N optimizer steps")
    eval_mcq: str | None = setting(
        None, "NegBench-format MCQ CSV evaluated before/after training and at each validation"
    )
    eval_mcq_images: str | None = setting(None, "image root of --eval-mcq (default: --images)")
    select_by: str = setting("val-loss", "keep the best checkpoint by val-loss or by mcq accuracy")
    patience: int | None = setting(None, "stop after this many validations without improvement")
    mixed_precision: str = setting("no", "no, bf16 or fp16 (fp16 needs a GPU)")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step")
    save_every: int = setting(0, "write a resumable accelerate checkpoint every N steps (0: only at the end)")
    resume: bool = setting(False, "continue from the newest checkpoint in OUTPUT/checkpoints")
    cache_image_features: bool = setting(True, "embed each image once with the frozen vision tower (default on)")
    push_to_hub: str | None = setting(None, "after training, push OUTPUT to this Hub repo id")
    hub_private: bool = setting(False, "create the Hub repo as private")
    export_transformers: bool = setting(True, "also write transformers CLIPModel / CLIPTextModel folders")
    log_with: str = setting("tensorboard", "accelerate tracker (tensorboard, or none)")
    progress: bool = setting(True, "show a tqdm progress bar on the main process")

    def to_dict(self) -> dict:
        return asdict(self)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainers.finetune",
        description="Fine-tune a CLIP text encoder for negation (run with `accelerate launch -m trainers.finetune`).",
    )
    parser.add_argument("--config", help="YAML file with any of the settings below (flags override it)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.name == "objective":
            parser.add_argument(
                flag, dest=f.name, action="append", default=None, metavar="NAME[:WEIGHT]", help=help_text
            )
        else:
            kind = {"int | None": int, "int": int, "float": float}.get(f.type, str)
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML (--config) <- flags."""
    args = vars(build_parser().parse_args(argv))
    values: dict = {}
    config_path = args.pop("config")
    if config_path:
        values.update(load_yaml(config_path))
    values.update({k: v for k, v in args.items() if v is not None})
    return TrainConfig(**values)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
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
    if config.mixed_precision not in MIXED_PRECISION:
        raise ConfigError(f"--mixed-precision {config.mixed_precision!r}: expected one of {', '.join(MIXED_PRECISION)}")
    if config.select_by not in SELECT_BY:
        raise ConfigError(f"--select-by {config.select_by!r}: expected one of {', '.join(SELECT_BY)}")
    if config.select_by == "mcq" and not config.eval_mcq:
        raise ConfigError("--select-by mcq needs --eval-mcq CSV")
    if config.eval_mcq and not Path(config.eval_mcq).is_file():
        raise ConfigError(f"--eval-mcq {config.eval_mcq}: file does not exist")
    if config.eval_mcq_images and not Path(config.eval_mcq_images).is_dir():
        raise ConfigError(f"--eval-mcq-images {config.eval_mcq_images}: folder does not exist")
    parse_tuning(config.tuning)
    positive = {
        "batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "eval_every": config.eval_every,
        "lora_rank": config.lora_rank,
    }
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if config.max_steps is not None and config.max_steps < 1:
        raise ConfigError(f"--max-steps must be >= 1, got {config.max_steps}")
    if config.max_steps is None and not config.epochs > 0:
        raise ConfigError(f"--epochs must be > 0, got {config.epochs}")
    if not config.lr > 0:
        raise ConfigError(f"--lr must be > 0, got {config.lr}")
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
