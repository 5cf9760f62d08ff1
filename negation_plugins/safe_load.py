"""Read checkpoints from strangers without running their code.

Published negation-CLIP checkpoints are plain state dicts (NegationCLIP) or state dicts wrapped in a dict
(CoN-CLIP / Omni-NegCLIP ``{"model": ...}``, open_clip training ``{"state_dict": ...}``), sometimes with the
``module.`` prefix DistributedDataParallel adds. Only safetensors and ``torch.load(weights_only=True)`` are
used, so a pickle that needs code is refused before any of it runs.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class UnsafeCheckpointError(ValueError):
    """The file needs arbitrary code (a pickled object or a TorchScript program) to load."""


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` from a .safetensors file or a torch pickle, unwrapped and without ``module.``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw = load_file(str(path), device="cpu")
        except SafetensorError as err:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    else:
        raw = _torch_load_weights_only(path)
    return _unwrap(raw, path)


def _torch_load_weights_only(path: Path):
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("constants.pkl") for name in archive.namelist()):
                raise UnsafeCheckpointError(
                    f"{path}: a TorchScript archive (a program, not just weights); refusing to run it. "
                    "Load the original OpenAI weights through open_clip instead (e.g. 'ViT-B-32:openai'), "
                    "or re-save the weights as a state dict / safetensors from a trusted environment."
                )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path}: refused: the pickle needs code to load (not plain tensors), so it was not executed. "
            f"Only state dicts of tensors are accepted; convert it to safetensors in a trusted environment. "
            f"Detail: {str(err).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path}: not a readable torch checkpoint ({str(err).splitlines()[0]})") from None


def _unwrap(raw, path: Path) -> dict[str, torch.Tensor]:
    """Peel ``{"model": sd}``-style wrappers and the ``module.`` prefix; insist on a flat tensor dict."""
    state = raw
    for _ in range(3):  # wrappers nest at most a couple of levels in practice
        if not isinstance(state, dict):
            break
        inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), dict) and state[k]), None)
        if inner is None or _is_tensor_dict(state):
            break
        state = inner
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, (torch.Tensor, int, float))]
    if bad:
        raise ValueError(
            f"{path}: not a state dict: entries {', '.join(map(repr, bad[:5]))}"
            f"{' ...' if len(bad) > 5 else ''} are not tensors"
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _is_tensor_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())
