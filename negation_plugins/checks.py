"""Checks that run when a command starts, before any model loads or record is read: a bad output path fails in a
second with one line naming the flag and the path, instead of a traceback after the work (or a half-written output).
Command-line outputs declare their type as :class:`OutputPath`, which runs these checks as the arguments are parsed.

:class:`BadInputError` is both a ``ValueError`` (the trainer and library callers catch those) and a
``click.ClickException`` (click prints its one-line message without a traceback).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click


class BadInputError(click.ClickException, ValueError):
    """A path, file or flag that cannot work; the message names it and says what is wrong."""


def _writable_ancestor(path: Path, flag: str) -> None:
    """The nearest existing folder above ``path`` must be a folder we can create files in (missing folders
    between it and ``path`` are created by the writers)."""
    ancestor = next(a for a in path.absolute().parents if a.exists())
    if not ancestor.is_dir():
        raise BadInputError(f"{flag} {path}: {ancestor} is a file, not a folder")
    try:  # a real probe: permission bits say nothing to root, and read-only mounts pass os.access
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        raise BadInputError(f"{flag} {path}: cannot create files in {ancestor} ({error.strerror or error})") from None


def output_file(path: str | os.PathLike, flag: str) -> Path:
    """``path`` will be written as a file: it must not be a folder and its folder must be writable."""
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"{flag} {path}: is a folder; expected a file name")
    _writable_ancestor(path, flag)  # files are written to a temporary sibling, then renamed: the folder counts
    return path


def output_dir(path: str | os.PathLike, flag: str) -> Path:
    """``path`` will be written as a folder: it must not be a file and we must be able to create/fill it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadInputError(f"{flag} {path}: is a file; expected a folder")
    if path.is_dir():
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as error:
            raise BadInputError(f"{flag} {path}: cannot create files in it ({error.strerror or error})") from None
    else:
        _writable_ancestor(path, flag)
    return path


class OutputPath(click.Path):
    """A command-line path the command writes (a file, or a folder with ``folder=True``), checked by
    :func:`output_file` / :func:`output_dir` as click parses it, so no command can start its work without it."""

    def __init__(self, folder: bool = False, **kwargs):
        super().__init__(file_okay=not folder, dir_okay=folder, **kwargs)
        self.check = output_dir if folder else output_file

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        flag = param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
        self.check(value, flag)
        return value


def own_message(error: BaseException) -> str:
    """An input error's own one-line message, also after torch re-raised it from a DataLoader worker (it then carries
    the worker's traceback, whose last line is ``module.Type: message``)."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text
