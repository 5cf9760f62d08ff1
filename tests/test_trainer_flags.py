"""Flags from types: each setting's flag type, choices and help come from its field's type and metadata, and its
check sits with its declaration. A copy of the config with new fields gets the right flags without other edits."""

from __future__ import annotations

import argparse
import enum
from dataclasses import make_dataclass
from pathlib import Path

import pytest

from trainers.config import (
    ConfigError,
    TrainConfig,
    at_least,
    build_parser,
    check_settings,
    load_yaml,
    parse_config,
    setting,
)


class Sampler(enum.Enum):
    UNIFORM = "uniform"
    BY_OBJECT = "by-object"


@pytest.fixture
def extended():
    """TrainConfig plus a Path, an enum, a ``bool | None`` and a checked ``list[int]`` field."""
    return make_dataclass(
        "ExtendedConfig",
        [
            ("cache_dir", "Path | None", setting(None, "where to cache things")),
            ("sampler", "Sampler", setting(Sampler.UNIFORM, "how examples are drawn")),
            ("shuffle", "bool | None", setting(None, "shuffle (default: decided by the sampler)")),
            (
                "milestones",
                "list[int]",
                setting(
                    [],
                    "steps at which to log",
                    check=lambda v: None if all(m > 0 for m in v) else f"must all be > 0, got {v}",
                ),
            ),
        ],
        bases=(TrainConfig,),
        namespace={"__module__": __name__},
    )


def test_a_path_an_enum_and_an_optional_bool_get_their_own_flags(extended):
    parser = build_parser(extended)
    args = parser.parse_args(
        ["--cache-dir", "/tmp/x", "--sampler", "by-object", "--no-shuffle", "--milestones", "3", "--milestones", "5"]
    )
    assert args.cache_dir == Path("/tmp/x") and isinstance(args.cache_dir, Path)
    assert args.sampler is Sampler.BY_OBJECT
    assert args.shuffle is False and parser.parse_args([]).shuffle is None  # unset stays None: the default decides
    assert args.milestones == [3, 5]
    help_text = parser.format_help()
    assert "{uniform,by-object}" in help_text and "--shuffle, --no-shuffle" in help_text
    with pytest.raises(SystemExit):  # argparse refuses a value outside the choices, naming them
        parser.parse_args(["--sampler", "random"])


def test_a_type_with_no_flag_is_refused_not_made_a_string():
    odd = make_dataclass("Odd", [("shape", "tuple[int, int]", setting((1, 2), "a pair"))], bases=(TrainConfig,))
    with pytest.raises(TypeError, match="no command-line flag for a setting of type tuple"):
        build_parser(odd)


def test_checks_sit_with_their_declaration(extended):
    config = extended(model="m", train=__file__, output="o", lr=0.1, milestones=[3, 0])
    with pytest.raises(ConfigError, match=r"--milestones must all be > 0, got \[3, 0\]"):
        check_settings(config)
    with pytest.raises(ConfigError, match="--batch-size must be >= 1, got 0"):
        check_settings(TrainConfig(model="m", train=__file__, output="o", lr=0.1, batch_size=0))
    assert at_least(1)(None) is None  # an unset optional setting passes its check


def test_choices_come_from_the_type_for_flags_and_yaml(tmp_path):
    actions = {a.dest: a for a in build_parser()._actions}
    assert tuple(actions["negation"].choices) == ("records", "on-the-fly")
    assert tuple(actions["mixed_precision"].choices) == ("no", "bf16", "fp16")
    assert isinstance(actions["progress"], argparse.BooleanOptionalAction)
    assert actions["max_steps"].type is int and actions["lr"].type is float
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("negation: sometimes\n")
    config = parse_config(["--config", str(yaml_file), "--model", "m", "--train", __file__, "--output", "o"])
    assert load_yaml(yaml_file) == {"negation": "sometimes"}
    with pytest.raises(ConfigError, match="--negation 'sometimes': expected one of records, on-the-fly"):
        check_settings(config)
