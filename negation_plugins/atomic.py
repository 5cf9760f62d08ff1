"""Write files and folders so readers never see half of one: fill a temporary sibling, then rename it into place.

The temporary file name keeps the target's suffix, so writers that pick a format from it (matplotlib, PIL) still work.
This module is the project's one way to write an output; everything that writes results goes through it. It is
also where a full disk becomes one line (:class:`DiskFullError`, :func:`disk_writes`) and where a damaged cache file
is moved aside (:func:`set_aside`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import click

logger = logging.getLogger(__name__)

# Why a write can fail for lack of room, and the words the user sees. EFBIG: a file-size limit (ulimit -f,
# RLIMIT_FSIZE); Python ignores SIGXFSZ, so the write raises instead of the process being killed.
DISK_FULL_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit exceeded",
}
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # safetensors (Rust) reports an OSError as "... (os error 28)"
# torch.save loses the errno: "PytorchStreamWriter failed writing file ..." or "[enforce fail at inline_container.cc]
# ... unexpected pos N vs M"; the reason is then told from the process's file-size limit
_TORCH_WRITE_FAILED = re.compile(r"PytorchStreamWriter failed writing|inline_container\.cc.*unexpected pos")


class DiskFullError(click.ClickException):
    """A write that failed for lack of room, as one line naming the path. A click command that lets it through
    prints ``Error: <message>``; other entry points (the trainer) print ``message`` themselves."""

    def __init__(self, code: int, path: str | os.PathLike):
        self.errno, self.path = code, Path(path)
        super().__init__(
            f"{DISK_FULL_REASONS[code]} while writing {path}; free some space (or raise the limit) and run the "
            "same command again: complete earlier output is kept"
        )


def disk_full_errno(error: BaseException) -> int | None:
    """The errno when ``error`` is a write failing for lack of room: an OSError, safetensors' Rust error, or
    torch.save's (which has no errno: EFBIG when the process has a file-size limit, else ENOSPC)."""
    if isinstance(error, DiskFullError):
        return error.errno
    code = error.errno if isinstance(error, OSError) else None
    if code is None and (match := _RUST_OS_ERROR.search(str(error))):
        code = int(match.group(1))
    if code is None and isinstance(error, RuntimeError) and _TORCH_WRITE_FAILED.search(str(error)):
        import resource

        code = errno.EFBIG if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY else errno.ENOSPC
    return code if code in DISK_FULL_REASONS else None


@contextlib.contextmanager
def disk_writes(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk, quota or file-size limit inside the block into :class:`DiskFullError` naming ``path``."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as error:
        code = disk_full_errno(error)
        if code is None:
            raise
        raise DiskFullError(code, path) from None


def set_aside(path: str | os.PathLike, why: str) -> Path | None:
    """Rename a damaged cache file to ``<name>.corrupt-<UTC time>`` (kept for a post-mortem, never read again) and
    log it; None when another process moved it first."""
    path = Path(path)
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return None
    logger.warning("%s is damaged (%s): moved aside to %s; its entries are computed again", path, why, aside.name)
    return aside


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file, then rename it to ``path``; nothing is left on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        with disk_writes(path):
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
        with disk_writes(target):
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
