"""The world's pretrained base model, shipped inside the package so every machine starts from the same weights.

Pretraining is deterministic on one machine but not across machines (CPU kernels differ in the last bits, and 3000
steps amplify that), and it costs minutes on 2 cores. So the model that ``pretrain`` would train for the default
world and settings ships as package data (``negation_plugins/world/base_model/``): ``pretrain`` copies it instead
of training when its settings' cache key matches the one recorded in ``shipped.json``, after checking each file's
sha256. ``negclip world pretrain --no-cache`` still rebuilds it from the seed; ``--ship`` (maintainers) stores a
rebuilt model as the shipped one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ..atomic import atomic_folder

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


def shipped_model(key: str, folder: Path | None = None) -> Path | None:
    """The shipped model folder when it was trained with the settings of cache key ``key``, its files verified;
    None when nothing is shipped for these settings."""
    folder = FOLDER if folder is None else folder
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("cache_key") != key:
        return None
    for name, expected in manifest["sha256"].items():
        path = folder / name
        actual = sha256(path) if path.is_file() else "missing"
        if actual != expected:
            raise ShippedModelError(
                f"{path}: sha256 {actual} does not match the shipped {expected}; reinstall negation-plugins or "
                "rebuild the model with `negclip world pretrain --no-cache`"
            )
    return folder


def ship(model_dir: str | Path, names: tuple[str, ...], key: str, folder: Path | None = None) -> dict:
    """Store files ``names`` of a pretrained model folder as the shipped model for cache key ``key``; returns the
    manifest."""
    files = [Path(model_dir) / name for name in names]
    manifest = {"cache_key": key, "sha256": {p.name: sha256(p) for p in files}}

    def write(tmp: Path) -> None:
        for path in files:
            shutil.copyfile(path, tmp / path.name)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")

    atomic_folder(FOLDER if folder is None else folder, write)
    return manifest
