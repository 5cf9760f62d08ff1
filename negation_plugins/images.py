"""Decoding images named by data files. A missing, truncated or non-image file fails with one line naming the file,
wherever in the pipeline it is first decoded (header checks alone pass truncated files)."""

from __future__ import annotations

import os
from pathlib import Path


class ImageDecodeError(ValueError):
    """An image file that cannot be decoded; the message names it.

    Raised in a DataLoader worker, torch re-raises it in the main process with the worker's traceback as the message;
    only its last line, the one naming the file, is kept, so the error stays one line wherever decoding happens.
    """

    def __init__(self, message: str):
        from .checks import own_message

        super().__init__(own_message(ValueError(message)))


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
