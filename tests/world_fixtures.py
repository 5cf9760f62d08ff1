"""Session fixtures built once from the synthetic world: the exported files and a tiny pretrained base model."""

from __future__ import annotations

import pytest

from negation_plugins.world import WorldConfig, make_world

# Small enough to build in seconds, big enough that val scenes are new combinations of known shapes.
FIXTURE_WORLD = WorldConfig(n_images=800, seed=0, image_size=32, val_fraction=0.2)


@pytest.fixture(scope="session")
def world_coco(tmp_path_factory):
    """A rendered world: ``root``, ``images``, ``captions``/``instances`` (train), ``val_captions``/``val_instances``,
    ``mcq_csv`` (NegBench MCQ on the held-out val scenes) and ``mcq_train_csv``."""
    return make_world(tmp_path_factory.mktemp("world"), FIXTURE_WORLD, progress=False)


# A smaller budget than the README model (see perf/bench_world_pretrain.py), yet strong enough (affirmation
# ~0.78 on held-out MCQ) that fine-tuning it teaches negation; like any model pretrained on affirmative captions it
# reads "no X" as "X".
FIXTURE_PRETRAIN = {"steps": 600, "batch_size": 128}


@pytest.fixture(scope="session")
def world_model(world_coco, tmp_path_factory):
    """Spec ``local-dir:/path`` of a tiny open_clip CLIP pretrained from scratch on ``world_coco``'s captions."""
    from trainers.pretrain_world import PretrainConfig, pretrain

    out = tmp_path_factory.mktemp("world_model") / "model"
    pretrain(world_coco, out, PretrainConfig(**FIXTURE_PRETRAIN), use_cache=False, progress=False)
    return f"local-dir:{out}"
