"""The world's pretrained base model, shipped inside the package so every machine starts from the same weights.

Pretraining is deterministic on one machine but not across machines (CPU kernels differ in the last bits, and 3000
steps amplify that), and it costs minutes on 2 cores. So the model that ``pretrain`` would train for the default
world and settings ships as package data (``negation_plugins/world/base_model/``): ``pretrain`` copies it instead
of training when its settings' cache key matches the one recorded in ``shipped.json``, after checking each file's
sha256. ``negclip world pretrain --no-cache`` still rebuilds it from the seed; ``--ship`` (maintainers) stores a
rebuilt model as the shipped one.

Every world (:mod:`negation_plugins.world.kinds`) ships its own model in the same folder: the ``shapes`` world's
files under their own names (so ``local-dir:negation_plugins/world/base_model`` loads it), another world's with its
name as prefix (``icons.open_clip_model.safetensors``, manifest ``icons.shipped.json``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..atomic import atomic_write_bytes
from .kinds import DEFAULT_WORLD

FOLDER = Path(__file__).with_name("base_model")
MANIFEST = "shipped.json"
OPEN_CLIP_FILES = ("open_clip_config.json", "open_clip_model.safetensors")  # what convert.save_open_clip writes


class ShippedModelError(RuntimeError):
    """The shipped model's files do not match their recorded hashes (a damaged install)."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _prefix(kind: str) -> str:
    return "" if kind == DEFAULT_WORLD else f"{kind}."


def shipped_model(key: str, folder: Path | None = None, kind: str = DEFAULT_WORLD) -> dict[str, Path] | None:
    """The shipped model of world ``kind`` when it was trained with the settings of cache key ``key``, its files
    verified, as {model file name: shipped file}; None when nothing is shipped for these settings."""
    folder = FOLDER if folder is None else folder
    manifest_path = folder / (_prefix(kind) + MANIFEST)
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("cache_key") != key:
        return None
    files = {name: folder / (_prefix(kind) + name) for name in manifest["sha256"]}
    for name, expected in manifest["sha256"].items():
        path = files[name]
        actual = sha256(path) if path.is_file() else "missing"
        if actual != expected:
            raise ShippedModelError(
                f"{path}: sha256 {actual} does not match the shipped {expected}; reinstall negation-plugins or "
                "rebuild the model with `negclip world pretrain --no-cache`"
            )
    return files


def ship(
    model_dir: str | Path, names: tuple[str, ...], key: str, folder: Path | None = None, kind: str = DEFAULT_WORLD
) -> dict:
    """Store files ``names`` of a pretrained model folder as world ``kind``'s shipped model for cache key ``key``
    (other worlds' files in the folder stay); returns the manifest, written last."""
    folder = FOLDER if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    files = [Path(model_dir) / name for name in names]
    manifest = {"cache_key": key, "sha256": {p.name: sha256(p) for p in files}}
    for path in files:
        atomic_write_bytes(folder / (_prefix(kind) + path.name), path.read_bytes())
    atomic_write_bytes(folder / (_prefix(kind) + MANIFEST), (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest
