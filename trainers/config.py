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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from negation_plugins.data.formats import source_problem
from negation_plugins.textfiles import read_text

DEFAULT_OBJECTIVES = ("negbench-mcq", "clip:0.5")
DEFAULT_LORA_TARGETS = "attn,mlp"
NEGATION_TOKENS = "negation"  # --lora-trainable-tokens: every single-word negation cue of negation_plugins.lexicon
TUNING_PATTERN = re.compile(r"^(full|lora|front:(\d+)-(\d+))$")
REQUEUE_EXIT_CODE = 75  # sysexits.h EX_TEMPFAIL ("try again later"): a preempted run saved a checkpoint and stopped
SAFE_LR = {"full": 1e-6, "front": 1e-6, "lora": 1e-4}  # full: NegationCLIP/Omni-NegCLIP; LoRA adapters start at 0


class ConfigError(ValueError):
    """A setting that cannot work; raised before any training starts."""


Check = Callable[[Any], "str | None"]  # a setting's value -> what is wrong with it (after the flag's name), or None


def setting(default, help: str, *, check: Check | None = None, aliases: tuple[str, ...] = (), **flag) -> Any:
    """A config field with its flag: ``help``, the ``check`` of its value (run by :func:`validate`), other flag
    names (``aliases``) and extra argparse keywords (``metavar``, ``nargs``/``const``). The flag's type and
    ``choices`` come from the field's type (:func:`flag_keywords`)."""
    metadata = {"help": help, "check": check, "aliases": aliases, "flag": flag}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def at_least(low: float) -> Check:
    return lambda value: None if value is None or value >= low else f"must be >= {low}, got {value}"


def within(low: float, high: float, high_included: bool = True) -> Check:
    def check(value):
        inside = low <= value <= high if high_included else low <= value < high
        return None if inside else f"must be in [{low}, {high}{']' if high_included else ')'}, got {value}"

    return check


def required(value) -> str | None:
    return None if value else "is required"


def existing_file(value) -> str | None:
    return None if not value or Path(value).is_file() else f"{value}: file does not exist"


def existing_folder(value) -> str | None:
    return None if not value or Path(value).is_dir() else f"{value}: folder does not exist"


def catchable_signals(value: str) -> str | None:
    for name in (n.strip().upper().removeprefix("SIG") for n in value.split(",") if n.strip()):
        if not hasattr(signal, "SIG" + name) or name in ("KILL", "STOP"):
            return f"{value!r}: {name} is not a signal a process can catch"
    return None


def valid_tuning(value: str) -> str | None:
    try:
        parse_tuning(value)
    except ConfigError as error:
        return str(error).removeprefix("--tuning ")
    return None


@dataclass
class TrainConfig:
    recipe: str | None = setting(
        None, "fill settings from a named preset (see `negclip recipes`); flags and --config still override it"
    )
    model: str = setting(
        "",
        "CLIP to fine-tune: open_clip name, hf-hub:ORG/REPO, local-dir:PATH, NegationCLIP .pth, transformers folder",
        check=required,
    )
    train: str = setting(
        "",
        "negation records JSONL, NegationCLIP updated_caption JSON, COCO captions JSON (with --negation on-the-fly), "
        "NegBench NegCap or NegMCQ CSV, CC-Neg .pt, or img2dataset webdataset shards by brace pattern "
        "('cc12m-{0000..2175}.tar', streamed); A::B joins sources (streamed)",
        check=lambda value: required(value) or source_problem(value),
    )
    train_format: Literal["jsonl", "negationclip", "negcap", "negmcq", "webdataset", "ccneg"] | None = setting(
        None, "format of --train (default: recognized by its name, columns or content)"
    )
    stream: bool = setting(
        False,
        "read --train lazily while training: memory and start-up independent of its size (always on for shards); "
        "no validation split (use --eval-mcq); see docs/scale.md",
    )
    stream_shuffle: int = setting(4096, "streamed input: rows in the shuffle buffer", check=at_least(1))
    stream_pool: int = setting(
        1024,
        "streamed input: rows read before a batch that MCQ fillers and distractor images come from",
        check=at_least(1),
    )
    images: str = setting("", "folder the records' image paths are relative to", check=existing_folder)
    output: str = setting(
        "", "folder for the trained model, adapters, model card, logs and checkpoints", check=required
    )
    instances: str | None = setting(
        None, "COCO instances JSON (objects per image) for --negation on-the-fly", check=existing_file
    )
    negation: Literal["records", "on-the-fly"] = setting(
        "records", "records: negated captions come from --train; on-the-fly: TNG-CLIP templates inside the step"
    )
    objective: list[str] = setting(
        list(DEFAULT_OBJECTIVES),
        "NAME[:WEIGHT], repeatable (see `negclip plugins`); default: " + " + ".join(DEFAULT_OBJECTIVES),
        check=lambda value: None if value else "needs at least one objective",
        metavar="NAME[:WEIGHT]",
    )
    mcq_affirmation_share: float = setting(
        0.0,
        "negbench-mcq: share of training questions that are affirmation questions (the caption against copies "
        "naming an absent object instead of a present one); above 0 negation questions also get such a distractor",
        check=within(0, 1),
    )
    mcq_scope_swap: bool = setting(
        False,
        "negbench-mcq: each negation question also offers its true caption with the negated (absent) object "
        "replaced by a present one, so the answer turns on which object is negated",
    )
    tuning: str = setting(
        "full",
        "full (whole text tower), lora (peft adapters on the text tower), front:A-B (text layers A..B inclusive)",
        check=valid_tuning,
    )
    lora_rank: int = setting(16, "LoRA rank r", check=at_least(1))
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
    max_steps: int | None = setting(None, "optimizer steps (overrides --epochs)", check=at_least(1))
    epochs: float = setting(5.0, "passes over the training examples (fractions allowed)")
    batch_size: int = setting(64, "examples per process per micro-batch", check=at_least(1))
    lr: float | None = setting(
        None,
        "peak learning rate (AdamW, linear warmup, cosine decay); default 1e-6 (full/front) or 1e-4 (lora)",
        check=lambda value: None if value is not None and value > 0 else f"must be > 0, got {value}",
    )
    weight_decay: float = setting(0.01, "AdamW weight decay on matrices")
    warmup_steps: int = setting(20, "linear warmup steps")
    grad_clip: float = setting(1.0, "max gradient norm (0 disables)")
    seed: int = setting(0, "seed for the split, batches, negation sampling and LoRA init")
    val_fraction: float = setting(
        0.1, "share of images held out for validation (0 disables validation)", check=within(0, 1, False)
    )
    eval_every: int | None = setting(
        None, "validate every N optimizer steps (default: once per epoch)", check=at_least(1)
    )
    val_max_batches: int | None = setting(
        None,
        "validation batches per evaluation, split across processes (default: eval-every // 10, at most 50: "
        "validation stays under ~5%% of the training time)",
        check=at_least(1),
    )
    eval_mcq: str | None = setting(
        None,
        "NegBench-format MCQ CSV evaluated before/after training and at each validation (affirmation, negation and "
        "hybrid reported apart; a warning when affirmation falls more than 0.05 below its start)",
        check=existing_file,
    )
    eval_mcq_images: str | None = setting(None, "image root of --eval-mcq (default: --images)", check=existing_folder)
    eval_mcq_max_rows: int | None = setting(
        None,
        "--eval-mcq rows scored per evaluation, evenly spread over the CSV and split across processes (default: "
        "val-max-batches x batch-size, like validation)",
        check=at_least(1),
    )
    select_by: Literal["val-loss", "mcq"] = setting(
        "val-loss", "keep the best checkpoint by val-loss or by mcq accuracy"
    )
    patience: int | None = setting(None, "stop after this many validations without improvement", check=at_least(1))
    mixed_precision: Literal["no", "bf16", "fp16"] | None = setting(
        None, "fp16 needs a GPU; default: what `accelerate launch`/`accelerate config` say"
    )
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step", check=at_least(1))
    checkpointing_steps: int = setting(
        500,
        "write a resumable accelerate checkpoint every N steps into OUTPUT/checkpoints (0: never)",
        check=at_least(0),
        aliases=("--save-every",),
    )
    checkpoints_total_limit: int | None = setting(
        None, "keep only the newest N checkpoints (default: all)", check=at_least(1)
    )
    resume: str | None = setting(
        None,
        "latest (newest checkpoint in OUTPUT/checkpoints; the default for a bare --resume) or a checkpoint PATH",
        aliases=("--resume-from-checkpoint", "--resume_from_checkpoint"),
        nargs="?",
        const="latest",
    )
    save_on_signal: str = setting(
        "TERM,USR1",
        f"comma list of signals (TERM, USR1, ...) on which every process finishes its step, a resumable checkpoint is "
        f"saved and the run exits with code {REQUEUE_EXIT_CODE} (requeue; resume with --resume latest); empty: none",
        check=catchable_signals,
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
        check=at_least(0),
    )
    log_every: int = setting(
        10,
        "write losses to metrics.jsonl and the trackers every N steps (one host sync per N steps)",
        check=at_least(1),
    )
    push_to_hub: str | None = setting(None, "after training, push OUTPUT to this Hub repo id")
    hub_private: bool = setting(False, "create the Hub repo as private")
    export_transformers: bool = setting(True, "also write transformers CLIPModel / CLIPTextModel folders")
    log_with: Literal["tensorboard", "wandb", "all", "none"] = setting(
        "tensorboard", "accelerate tracker", aliases=("--report-to",)
    )
    progress: bool = setting(True, "show a tqdm progress bar on the main process")

    def to_dict(self) -> dict:
        return asdict(self)


def flag_keywords(annotation) -> dict:
    """argparse keywords for a setting's type: bool -> --x/--no-x; Literal or Enum -> ``choices`` (shown in --help);
    list[T] -> repeatable; int, float, str, Path -> that type; ``T | None`` as T. Any other type is refused here,
    never turned into a string flag."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if get_origin(annotation) is Literal:
        values = get_args(annotation)
        return {"type": type(values[0]), "choices": values}
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        values = [member.value for member in annotation]
        return {"type": annotation, "choices": list(annotation), "metavar": "{" + ",".join(map(str, values)) + "}"}
    if get_origin(annotation) is list and get_args(annotation)[0] in (int, float, str, Path):
        return {"action": "append", "type": get_args(annotation)[0]}
    if annotation in (int, float, str, Path):
        return {"type": annotation}
    raise TypeError(f"no command-line flag for a setting of type {annotation!r}")


def choices_of(annotation) -> tuple | None:
    """The values a Literal or Enum setting (or ``... | None``) allows."""
    for kind in (annotation, *get_args(annotation)):
        if get_origin(kind) is Literal:
            return get_args(kind)
        if isinstance(kind, type) and issubclass(kind, Enum):
            return tuple(kind)
    return None


def flag_names(f) -> list[str]:
    return ["--" + f.name.replace("_", "-"), *f.metadata["aliases"]]


def build_parser(config_class: type = None) -> argparse.ArgumentParser:
    """One flag per field of ``config_class`` (default :class:`TrainConfig`), from its type and metadata."""
    config_class = config_class or TrainConfig
    parser = argparse.ArgumentParser(
        prog="trainers.finetune",
        description="Fine-tune a CLIP text encoder for negation (run with `accelerate launch -m trainers.finetune`).",
    )
    parser.add_argument("--config", help="YAML file with any of the settings below (flags override it)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved settings as JSON and exit (loads no data or model)"
    )
    types = get_type_hints(config_class)
    for f in fields(config_class):
        keywords = {**flag_keywords(types[f.name]), **f.metadata["flag"]}
        parser.add_argument(*flag_names(f), dest=f.name, default=None, help=f.metadata["help"], **keywords)
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


def check_settings(config) -> None:
    """Each setting's own check: its allowed values (Literal/Enum type) and the ``check`` declared with it."""
    types = get_type_hints(type(config))
    for f in fields(config):
        value, allowed = getattr(config, f.name), choices_of(types[f.name])
        name = "/".join([*f.metadata["aliases"][:1], flag_names(f)[0]])
        if allowed is not None and value is not None and value not in allowed:
            raise ConfigError(f"{name} {value!r}: expected one of {', '.join(map(str, allowed))}")
        problem = f.metadata["check"] and f.metadata["check"](value)
        if problem:
            raise ConfigError(f"{name} {problem}")


def validate(config: TrainConfig) -> None:
    """Checks that need no model or data: each setting's own (:func:`check_settings`), then those between settings;
    the trainer checks model/data facts right after loading them."""
    from negation_plugins.checks import output_dir

    check_settings(config)
    output_dir(config.output, "--output")
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
    if config.select_by == "mcq" and not config.eval_mcq:
        raise ConfigError("--select-by mcq needs --eval-mcq CSV")
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
    if config.max_steps is None and not config.epochs > 0:
        raise ConfigError(f"--epochs must be > 0, got {config.epochs}")
    if config.push_to_hub:
        from huggingface_hub import get_token

        if get_token() is None:
            raise ConfigError(f"--push-to-hub {config.push_to_hub}: no Hub token; set HF_TOKEN or `hf auth login`")
