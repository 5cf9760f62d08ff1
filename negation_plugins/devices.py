"""Where a model runs when the user does not say: this process's GPU in bfloat16 when CUDA is present, else the CPU
in float32. Under ``torchrun``/``accelerate launch`` each process takes the GPU of its ``LOCAL_RANK``."""

from __future__ import annotations

import os


def pick_device(device: str | None, dtype: str | None, what: str):
    """``(device, torch dtype)`` from the given names, filling in what is None; ``what`` names the option's owner."""
    import torch

    if device is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    dtype = dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"{what}: dtype must be a torch dtype name such as bfloat16 or float32, got {dtype!r}")
    return device, getattr(torch, dtype)
