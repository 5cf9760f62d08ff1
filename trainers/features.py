"""The image-feature store: the frozen vision tower's embedding of each image, computed once and kept on disk.

Only the text tower trains, so an image's features depend on (vision weights, preprocessing, image file) alone.
The store keeps them under ``ROOT/<key>/`` where ``key`` hashes the vision tower's weights and the preprocessing;
each file ``part-*.safetensors`` holds fp16 rows and, in its metadata, the image identities (resolved path, size,
mtime) of those rows. A run embeds only the images the store lacks: each process takes a disjoint shard, embeds
it through a DataLoader (workers decode and preprocess; bf16 autocast on GPU), writes its own part atomically,
and after a barrier every process reads all parts. Later runs, resumes and other text-tuning runs of the same base
model compute nothing. ROOT must be a folder every process can read (one machine, or a shared filesystem).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

DEFAULT_ROOT_ENV = "NEGCLIP_FEATURE_STORE"
EMBED_BATCH = 256


def default_root() -> Path:
    """``$NEGCLIP_FEATURE_STORE``, else ``~/.cache/negation-plugins/image-features``."""
    env = os.environ.get(DEFAULT_ROOT_ENV)
    return Path(env) if env else Path.home() / ".cache" / "negation-plugins" / "image-features"


def store_key(visual: torch.nn.Module, preprocess) -> str:
    """Hash of the vision tower's weights (names, shapes, dtypes, bytes) and of the preprocessing pipeline."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(visual.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    digest.update(repr(preprocess).encode())
    return digest.hexdigest()


def image_identity(path: Path) -> str:
    """Resolved path + size + mtime: a changed or replaced file is a different image."""
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


class PixelDataset(Dataset):
    """Decode + preprocess one image file per item (in DataLoader workers)."""

    def __init__(self, files: list[Path], preprocess):
        self.files, self.preprocess = files, preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        from negation_plugins.images import load_rgb

        return self.preprocess(load_rgb(self.files[index]))


def pixel_loader(files: list[Path], preprocess, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(
        PixelDataset(files, preprocess),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )


@torch.no_grad()
def embed_files(clip, preprocess, files: list[Path], workers: int, progress: bool = False) -> torch.Tensor:
    """Normalized image features (float32, CPU) of ``files`` through the frozen vision tower."""
    from tqdm.auto import tqdm

    visual = clip.visual
    device = next(visual.parameters()).device
    out = []
    loader = pixel_loader(files, preprocess, EMBED_BATCH, workers)
    for pixels in tqdm(loader, disable=not progress, desc="embedding images"):
        with autocast_bf16(device):
            features = clip.encode_image(pixels.to(device, non_blocking=True), normalize=True)
        out.append(features.float().cpu())
    return torch.cat(out)


def autocast_bf16(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


class FeatureStore:
    """One store folder for one (vision weights, preprocessing) key."""

    def __init__(self, root: str | os.PathLike, key: str):
        self.folder = Path(root) / key

    def load(self) -> dict[str, torch.Tensor]:
        """identity -> fp16 row, from every complete part file."""
        from safetensors import safe_open

        rows: dict[str, torch.Tensor] = {}
        for part in sorted(self.folder.glob("part-*.safetensors")) if self.folder.is_dir() else []:
            with safe_open(str(part), framework="pt") as handle:
                identities = json.loads(handle.metadata()["images"])
                features = handle.get_tensor("features")
            rows.update(zip(identities, features))
        return rows

    def write(self, identities: list[str], features: torch.Tensor) -> Path | None:
        """A new part (temp name, then rename via negation_plugins.atomic); nothing for no rows."""
        from safetensors.torch import save_file

        from negation_plugins.atomic import atomic_write

        if not identities:
            return None
        path = self.folder / f"part-{uuid.uuid4().hex}.safetensors"
        tensor = features.to(torch.float16).contiguous()
        metadata = {"images": json.dumps(identities)}
        return atomic_write(path, lambda tmp: save_file({"features": tensor}, str(tmp), metadata=metadata))


def build_feature_table(
    accelerator, clip, preprocess, files: list[Path], root: str | os.PathLike, workers: int, progress: bool
) -> tuple[torch.Tensor, dict]:
    """Features of ``files`` (rows in the same order, fp16 on CPU) from the store, embedding what it lacks.

    Returns (table, counts) with counts = {"computed": images embedded by all processes together,
    "from_store": images found in the store, "per_process": images each process embedded}.
    """
    store = FeatureStore(root, store_key(clip.visual, preprocess))
    identities = [image_identity(f) for f in files]
    have = store.load()
    accelerator.wait_for_everyone()  # all processes list what is missing before any of them writes a part
    missing = sorted({i for i in identities if i not in have})
    mine = missing[accelerator.process_index :: accelerator.num_processes]
    by_identity = {identity: file for identity, file in zip(identities, files)}
    if mine:
        features = embed_files(clip, preprocess, [by_identity[i] for i in mine], workers, progress)
        store.write(mine, features)
    accelerator.wait_for_everyone()
    if missing:
        have = store.load()
    lost = [i for i in missing if i not in have]
    if lost:
        raise RuntimeError(
            f"feature store {store.folder}: {len(lost)} image features written by other processes are not visible "
            "here; put --feature-store on a filesystem all processes share"
        )
    table = torch.stack([have[i] for i in identities]) if identities else torch.empty(0)
    per_process = accelerator.gather(torch.tensor([len(mine)], device=accelerator.device)).tolist()
    counts = {
        "computed": sum(per_process),
        "from_store": len(set(identities)) - len(missing),
        "per_process": per_process,
    }
    return table, counts
