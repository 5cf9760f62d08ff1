"""Named presets (``--recipe NAME``): the settings each paper's public code or text uses, each value with its source.

A recipe only fills settings; flags and the YAML file still override it (defaults <- recipe <- YAML <- flags).
Where a paper states nothing for a setting, the recipe leaves the trainer's default and ``negclip recipes`` says so.
``batch_size`` is per process, as everywhere in the trainer: the papers' numbers are for one GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    settings: dict[str, tuple[object, str]]  # setting -> (value, where the value comes from)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def values(self) -> dict:
        return {key: value for key, (value, _) in self.settings.items()}


# Public references only: the paper (arXiv id) and, where one is released, the repository and file.
NEGATIONCLIP = 'NegationCLIP (Know "No" Better, ICCV 2025, arXiv 2501.10913; github.com/parkquasar/NegationCLIP)'
TNG = "TNG-CLIP paper (arXiv 2505.18434)"
OMNI = "Omni-NegCLIP paper and code (arXiv 2603.29258)"
NEGBENCH_PARAMS = "github.com/m1k2zoo/negbench benchmarks/src/training/params.py default"
NEGBENCH_MODEL = (
    "github.com/m1k2zoo/negbench models.md: best model NegCLIP_CC12M_NegFull_ViT-B-32_lr1e-8_clw0.99_mlw0.01"
)
CONCLIP_ARGS = "github.com/jaisidhsingh/CoN-CLIP src/training_utils/helpers.py setup_args default"
CONCLIP_RUN = "github.com/jaisidhsingh/CoN-CLIP src/run_finetuning.sh"
WORLD = "perf/compare_training.py on the synthetic world (README table)"

# The synthetic world's best measured settings (full tuning); ``world-lora`` changes what LoRA needs.
WORLD_SETTINGS = {
    "objective": (
        ["negbench-mcq", "conclip", "clip:1.0"],
        WORLD + " (3 seeds: held-out MCQ 0.897 vs 0.849 without conclip; clip:1.0 kept more than 0.5)",
    ),
    "tuning": ("full", WORLD + " (row 16, 3 seeds, 1 thread: 0.874 held-out; LoRA needs 30 epochs for it: world-lora)"),
    "lr": (3e-3, WORLD + " (a from-scratch toy model; far too high for a web-pretrained CLIP)"),
    "batch_size": (64, WORLD),
    "epochs": (
        15.0,
        WORLD + " (held-out phrasings, seed 0: 0.771 after 5 epochs, 0.903 after 15, 0.895 after 25)",
    ),
    "warmup_steps": (20, WORLD),
    "weight_decay": (0.01, WORLD),
    "mcq_scope_swap": (
        True,
        WORLD + " (row 28 vs row 16, 3 seeds, 1 thread: held-out MCQ 0.908 vs 0.874, higher on each seed)",
    ),
}

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "negationclip",
            "NegationCLIP: plain InfoNCE on absence-negated captions, whole text tower but ln_final",
            {
                "objective": (["infonce"], NEGATIONCLIP + " (symmetric InfoNCE on the negated captions only)"),
                "tuning": ("full", NEGATIONCLIP + " (token/positional embeddings, resblocks, text_projection)"),
                "freeze": ("ln_final", NEGATIONCLIP + " (their code freezes ln_final)"),
                "lr": (1e-6, NEGATIONCLIP + " (AdamW)"),
                "batch_size": (512, NEGATIONCLIP),
                "epochs": (15.0, NEGATIONCLIP),
                "seed": (42, NEGATIONCLIP),
                "val_fraction": (0.2, NEGATIONCLIP + " (random 80/20 split; here split by image)"),
                "select_by": ("val-loss", NEGATIONCLIP + " (keep the weights with the best validation loss)"),
            },
            ("LR schedule, warmup, weight decay: not stated; the trainer's defaults apply",),
        ),
        Recipe(
            "tng-clip",
            "TNG-CLIP: hybrid/full negations generated in the step, text->image CE over 3N texts",
            {
                "negation": ("on-the-fly", TNG + " (templates inside the training step)"),
                "objective": (["tng"], TNG),
                "tuning": ("full", TNG + " (vision frozen)"),
                "lr": (5e-6, TNG),
                "batch_size": (128, TNG),
                "epochs": (10.0, TNG),
                "mixed_precision": ("bf16", TNG + " (AMP; bf16 is a project choice of AMP dtype, fp16 needs a GPU)"),
            },
            ("needs COCO captions + --instances, or records with objects",),
        ),
        Recipe(
            "omni-negclip",
            "Omni-NegCLIP: presence + absence losses, front text layers 0-5 only",
            {
                "objective": (["omni"], OMNI + " (L_pres + L_abs)"),
                "tuning": ("front:0-5", OMNI + " (code: resblocks 0-5 + embeddings, ln_final, text_projection)"),
                "lr": (1e-6, OMNI + " (AdamW)"),
                "weight_decay": (0.2, OMNI),
                "warmup_steps": (50, OMNI + " (cosine schedule after warmup)"),
                "batch_size": (128, OMNI),
            },
            ("epochs: not stated; the trainer's default applies",),
        ),
        Recipe(
            "negbench",
            "NegBench fine-tune: 0.99 CLIP + 0.01 MCQ cross-entropy",
            {
                "objective": (["clip:0.99", "negbench-mcq:0.01"], NEGBENCH_MODEL + " (clw 0.99, mlw 0.01)"),
                "lr": (1e-8, NEGBENCH_MODEL + " (lr1e-8)"),
                "batch_size": (64, NEGBENCH_PARAMS + " (--batch-size, per GPU)"),
                "weight_decay": (0.2, NEGBENCH_PARAMS + " (--wd)"),
                "mixed_precision": ("bf16", NEGBENCH_PARAMS + " (--precision amp; bf16 is a project choice)"),
            },
            (
                "epochs and warmup of the released run are not public (params.py defaults 32 / 10000 are "
                "pretraining values); the trainer's defaults apply",
                "their code can also train the vision tower; this trainer keeps it frozen",
            ),
        ),
        Recipe(
            "conclip",
            "CoN-CLIP: true/negated captions with distractor images, image tower locked",
            {
                "objective": (["conclip"], CONCLIP_ARGS + " + src/training_utils/loss_functions.py"),
                "tuning": ("full", CONCLIP_RUN + " (--lock-image-encoder=on: the text side trains)"),
                "lr": (1e-6, CONCLIP_ARGS + " (--learning-rate)"),
                "batch_size": (200, CONCLIP_RUN + " (--batch-size=200)"),
                "epochs": (5.0, CONCLIP_ARGS + " (--epochs)"),
                "warmup_steps": (50, CONCLIP_ARGS + " (--warmup-steps, cosine_lr)"),
                "weight_decay": (0.2, CONCLIP_ARGS + " (--weight-decay)"),
                "grad_clip": (0.0, CONCLIP_ARGS + " (--norm-gradient-clip None)"),
                "mixed_precision": ("bf16", CONCLIP_ARGS + " (--precision amp; bf16 is a project choice)"),
            },
        ),
        Recipe(
            "world",
            "best measured on the synthetic world (tiny CLIP pretrained there): MCQ with scope swaps + CoN-CLIP + CLIP "
            "retention, full",
            WORLD_SETTINGS,
        ),
        Recipe(
            "world-lora",
            "the world recipe as peft LoRA (r16 on attn + mlp): lr 1e-2, twice the epochs, a heavier CLIP retention",
            {
                **WORLD_SETTINGS,
                "objective": (
                    ["negbench-mcq", "conclip", "clip:2.0"],
                    WORLD + " (row 26, 3 seeds: held-out MCQ 0.881, R@1 0.991x; clip:1.0 kept 0.951x, seed 0)",
                ),
                "tuning": ("lora", WORLD + " (row 26 vs full tuning's row 16, one run: 0.881 vs 0.874 held-out)"),
                "lr": (
                    1e-2,
                    WORLD + " (2e-2 diverged, row 13; a toy-model rate: LoRA on a real CLIP defaults to 1e-4)",
                ),
                "epochs": (
                    30.0,
                    WORLD + " (held-out: 0.860 after 15 epochs, row 18; 0.893 after 45 at R@1 0.982x, row 27)",
                ),
                "mcq_scope_swap": (
                    False,
                    WORLD + " (row 29 vs row 26, 3 seeds: 0.880 vs 0.881 held-out, R@1 0.975x vs 0.991x with them)",
                ),
            },
        ),
    )
}
