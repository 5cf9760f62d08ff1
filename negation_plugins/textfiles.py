"""Open the text files users hand us the way the tools that wrote them meant them.

Excel and many Windows tools start UTF-8 files with a byte-order mark and end lines with CRLF; Excel's "Unicode text"
is UTF-16 with its own mark. Opened as plain ``utf-8`` the mark sticks to the first column name or JSON value
("\\ufeffimage_path") and the file is refused. Every CSV/TSV/JSON/JSONL/text reader in the project opens files
through :func:`open_text` (or :func:`read_text`), so each of them accepts all of these.

Line endings: text mode turns CRLF and CR into ``\\n``. CSV readers pass ``newline=""``, as the :mod:`csv` module
asks, and the csv module itself takes CRLF, LF or CR row endings (and newlines inside quoted cells) as they are.
"""

from __future__ import annotations

import codecs
import os
from typing import TextIO

_UTF16_MARKS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def text_encoding(path: str | os.PathLike) -> str:
    """``utf-16`` when the file starts with a UTF-16 byte-order mark, else ``utf-8-sig`` (UTF-8, a mark dropped)."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    return "utf-16" if head in _UTF16_MARKS else "utf-8-sig"


def open_text(path: str | os.PathLike, *, newline: str | None = None, errors: str = "strict") -> TextIO:
    """Open ``path`` for reading text: UTF-8 with or without a byte-order mark (or UTF-16 with one); CRLF read as
    ``\\n`` (pass ``newline=""`` for the :mod:`csv` module). A file that is not such text raises
    :class:`UnicodeDecodeError` when read, as :func:`open` does."""
    return open(path, encoding=text_encoding(path), newline=newline, errors=errors)


def read_text(path: str | os.PathLike, *, errors: str = "strict") -> str:
    """The whole of ``path`` as :func:`open_text` reads it (no mark, ``\\n`` line ends)."""
    with open_text(path, errors=errors) as handle:
        return handle.read()
