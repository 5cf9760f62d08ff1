"""Named recipes: each resolves to its paper's settings, flags and YAML override it, the defaults are safe for a
web-pretrained CLIP, ``--dry-run`` prints the resolved settings without loading anything."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from click.testing import CliRunner

from negation_plugins.testing import TINY_CFG
from trainers.config import ConfigError, TrainConfig, build_config, parse_config
from trainers.finetune import main
from trainers.recipes import RECIPES
from trainers.tuning import apply_tuning

PAPERS = {
    "negationclip": {
        "objective": ["infonce"],
        "tuning": "full",
        "freeze": "ln_final",
        "lr": 1e-6,
        "batch_size": 512,
        "epochs": 15.0,
        "seed": 42,
        "select_by": "val-loss",
    },
    "tng-clip": {
        "negation": "on-the-fly",
        "objective": ["tng"],
        "lr": 5e-6,
        "batch_size": 128,
        "epochs": 10.0,
        "mixed_precision": "bf16",
    },
    "omni-negclip": {
        "objective": ["omni"],
        "tuning": "front:0-5",
        "lr": 1e-6,
        "weight_decay": 0.2,
        "warmup_steps": 50,
        "batch_size": 128,
    },
    "negbench": {"objective": ["clip:0.99", "negbench-mcq:0.01"], "lr": 1e-8, "weight_decay": 0.2},
    "conclip": {"objective": ["conclip"], "lr": 1e-6, "batch_size": 200, "epochs": 5.0, "weight_decay": 0.2},
    "world": {
        "objective": ["negbench-mcq", "conclip", "clip:1.0"],
        "tuning": "full",
        "lr": 3e-3,
        "batch_size": 64,
        "epochs": 15.0,
        "mcq_scope_swap": True,
    },
    "world-lora": {
        "objective": ["negbench-mcq", "conclip", "clip:2.0"],
        "tuning": "lora",
        "lora_rank": 16,
        "lr": 1e-2,
        "batch_size": 64,
        "epochs": 30.0,
        "mcq_scope_swap": False,
    },
}


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_each_recipe_resolves_to_its_papers_settings(name):
    config = parse_config(["--recipe", name])
    assert config.recipe == name
    for key, value in PAPERS[name].items():
        assert getattr(config, key) == value, key
    assert set(RECIPES) == set(PAPERS)


def test_flags_and_yaml_override_the_recipe(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("recipe: omni-negclip\nbatch-size: 7\n")
    config = parse_config(["--config", str(config_file), "--lr", "2e-6"])
    assert (config.recipe, config.batch_size, config.lr, config.tuning) == ("omni-negclip", 7, 2e-6, "front:0-5")
    assert parse_config(["--recipe", "negationclip", "--recipe", "conclip"]).recipe == "conclip"
    with pytest.raises(ConfigError, match="unknown; known recipes: negationclip"):
        parse_config(["--recipe", "clipneg"])


@pytest.mark.parametrize("tuning", ["full", "front:0-5"])
def test_default_learning_rate_is_safe_for_a_pretrained_clip(tuning):
    assert parse_config(["--tuning", tuning]).lr <= 1e-5
    assert build_config(tuning=tuning).lr <= 1e-5
    assert parse_config(["--tuning", "lora"]).lr == 1e-4  # adapters start at zero


def test_dry_run_prints_the_resolved_settings_and_loads_nothing(capsys, tmp_path):
    code = main(
        ["--recipe", "tng-clip", "--model", "local-dir:/nowhere", "--train", str(tmp_path / "no.jsonl"), "--dry-run"]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == set(TrainConfig().to_dict())  # the keys of results.json's "config"
    assert printed["lr"] == 5e-6 and printed["negation"] == "on-the-fly" and printed["model"] == "local-dir:/nowhere"


def test_freeze_keeps_ln_final_out_of_full_tuning():
    torch.manual_seed(0)
    model, names = apply_tuning(open_clip.CLIP(**TINY_CFG), "full", freeze="ln_final")
    assert not any(n.startswith("ln_final") for n in names)
    assert not model.ln_final.weight.requires_grad and model.transformer.resblocks[0].ln_1.weight.requires_grad
    assert "token_embedding.weight" in names and "text_projection" in names
    with pytest.raises(ConfigError, match="--freeze 'ln_finall' names no trainable"):
        apply_tuning(open_clip.CLIP(**TINY_CFG), "full", freeze="ln_finall")


def test_recipes_command_lists_every_recipe_with_sources():
    from negation_plugins.cli import cli

    result = CliRunner().invoke(cli, ["recipes"])
    assert result.exit_code == 0, result.output
    for name in RECIPES:
        assert f"{name}: " in result.output
    assert "jaisidhsingh/CoN-CLIP src/run_finetuning.sh" in result.output
    assert "m1k2zoo/negbench" in result.output and "lr1e-8" in result.output
    assert CliRunner().invoke(cli, ["recipes", "nope"]).exit_code != 0


def test_recipe_sources_name_public_references_or_this_repository():
    """A source is a paper (arXiv id), a public repository's file, or a file of this repository: never a path on
    one machine."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for recipe in RECIPES.values():
        for key, (_, source) in recipe.settings.items():
            public = "arXiv" in source or "github.com/" in source
            local = [word for word in source.replace("(", " ").split() if "/" in word and not word.startswith("github")]
            in_repo = bool(local) and all((root / word.rstrip(",;:)")).exists() for word in local[:1])
            assert public or in_repo, (recipe.name, key, source)
            assert "shared/reference" not in source, (recipe.name, key, source)
