"""Write files and folders so readers never see half of one: fill a temporary sibling, then rename it into place.

The temporary file name keeps the target's suffix, so writers that pick a format from it (matplotlib, PIL) still work.
This module is the project's one way to write an output; everything that writes results goes through it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file, then rename it to ``path``; nothing is left on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text, flushed to disk before the rename (resumable outputs rely on it)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    return atomic_write(path, write)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: str | os.PathLike, data, indent: int = 1) -> Path:
    """JSON (non-JSON values such as paths written with ``str``), ending in a newline."""
    return atomic_write_text(path, json.dumps(data, indent=indent, default=str) + "\n")


def check_replaceable(target: str | os.PathLike, overwrite: bool) -> None:
    """Refuse a non-empty ``target`` unless ``overwrite``; commands call it early, before the work."""
    target = Path(target)
    if not overwrite and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} already exists and is not empty (pass overwrite=True / --overwrite)")


def atomic_folder(target: str | os.PathLike, write: Callable[[Path], object], *, overwrite: bool = True) -> Path:
    """Call ``write(tmp)`` to fill a temporary sibling folder, then swap it in for ``target``.

    An existing ``target`` is replaced only after ``write`` succeeded (renamed aside, then deleted), so a failure or
    a kill leaves either the old folder or the new one, never a mix. With ``overwrite=False`` a non-empty
    ``target`` is refused before anything is written.
    """
    target = Path(target)
    check_replaceable(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:  # a symlink is removed, never the folder it points to
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
