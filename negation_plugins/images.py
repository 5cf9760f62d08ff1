"""Decoding images named by data files. A missing, truncated or non-image file fails with one line naming the file,
wherever in the pipeline it is first decoded (header checks alone pass truncated files)."""

from __future__ import annotations

import os
from pathlib import Path


class ImageDecodeError(ValueError):
    """An image file that cannot be decoded; the message names it."""


def load_rgb(path: str | os.PathLike):
    """The fully decoded RGB ``PIL.Image`` at ``path``, or an :class:`ImageDecodeError` naming the file."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() reads every pixel: truncation shows up here, not later
    except (FileNotFoundError, IsADirectoryError):
        raise ImageDecodeError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"{path}: not a readable image ({type(error).__name__}: {error})") from None
