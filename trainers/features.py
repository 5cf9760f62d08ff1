"""The image-feature store: the frozen vision tower's embedding of each image, computed once and kept on disk.

Only the text tower trains, so an image's features depend on (vision weights, preprocessing, image) alone. The store
keeps them under ``ROOT/<key>/`` where ``key`` hashes the vision tower's weights and the preprocessing. A run embeds
only the images the store lacks: each process takes a disjoint shard, embeds it through a DataLoader (workers decode
and preprocess; bf16 autocast on GPU), writes its own parts atomically, and after a barrier every process reads all
parts. Later runs, resumes and other text-tuning runs of the same base model compute nothing. ROOT must be a folder
every process can read (one machine, or a shared filesystem).

Samples are keyed by any identity string: :func:`image_identity` (resolved path, size, mtime) for image files; a
stream of samples uses its own, e.g. a webdataset sample's ``"<shard url>#<__key__>"`` (include what changes when
the image does, such as the shard's size and mtime). The API, for any reader of samples::

    store = FeatureStore(root, store_key(clip.visual, preprocess))
    lacking = store.missing(identities)  # the distinct identities with no stored features, in first-seen order
    store.write(lacking, features)  # their (N, D) rows; parts are written atomically
    rows = store.get(identities)  # (len(identities), D) fp16 rows in order; KeyError when one is absent

Scale: a part holds at most ``PART_ROWS`` rows sorted by a 128-bit hash of their identities; a look-up binary-searches
each part's memory-mapped hash column and copies only the rows asked for, so the memory a process holds does not
grow with the store (the OS page cache keeps what is hot, shared by the processes of a machine). Within a run each
identity is embedded by one process (disjoint shards); two runs that start at the same time may both embed an image
(the later part is a duplicate, never a conflict).

Damage: a part's file name carries a hash of its bytes; each process checks it once, when it first opens the part
(reading it once, in 16 MiB chunks). A truncated, zero-filled or otherwise damaged part is logged with its path,
moved aside (``*.corrupt-<time>``, :func:`negation_plugins.atomic.set_aside`) and its images are embedded again.
Writers only add parts and readers only see complete ones (temporary name, then rename), so concurrent runs never
read a torn part or lose one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

logger = logging.getLogger(__name__)

DEFAULT_ROOT_ENV = "NEGCLIP_FEATURE_STORE"
EMBED_BATCH = 256
PART_ROWS = 65536  # 64 MiB of fp16 rows at width 512: a 10M-image store has ~150 parts
PART_FORMAT = "negclip-features-1"


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
    """One store folder for one (vision weights, preprocessing) key: see the module docstring."""

    def __init__(self, root: str | os.PathLike, key: str):
        self.folder = Path(root) / key
        self._parts: dict[Path, _Part] = {}  # the parts this process has checked, by path

    def missing(self, identities: Sequence[str]) -> list[str]:
        """The distinct ``identities`` the store has no features for, in first-seen order."""
        unique = list(dict.fromkeys(identities))
        part_of, _ = self._locate(unique)
        return [identity for identity, part in zip(unique, part_of) if part < 0]

    def get(self, identities: Sequence[str]) -> torch.Tensor:
        """fp16 rows (on CPU) of ``identities``, in order."""
        part_of, row_of = self._locate(identities)
        if (part_of < 0).any():
            absent = [identities[i] for i in np.flatnonzero(part_of < 0)[:3]]
            raise KeyError(f"feature store {self.folder}: no features for {int((part_of < 0).sum())} images: {absent}")
        parts = list(self._parts.values())
        out = np.empty((len(identities), parts[0].features.shape[1] if parts else 0), dtype=np.float16)
        for index in np.unique(part_of):
            take = np.flatnonzero(part_of == index)
            out[take] = parts[index].features[row_of[take]]
        return torch.from_numpy(out)

    def __len__(self) -> int:
        """Rows stored (an image embedded by two concurrent runs counts twice)."""
        self._refresh()
        return sum(len(part.hashes) for part in self._parts.values())

    def write(self, identities: Sequence[str], features: torch.Tensor) -> list[Path]:
        """New parts of at most ``PART_ROWS`` rows each (temporary name, then rename). A full disk raises
        :class:`negation_plugins.atomic.DiskFullError` naming the part; the parts written before it stay."""
        from safetensors.torch import save

        from negation_plugins.atomic import atomic_write_bytes

        hashes = identity_hashes(identities)
        features = features.to(torch.float16).cpu()
        written = []
        for start in range(0, len(identities), PART_ROWS):
            chunk = hashes[start : start + PART_ROWS]
            order = np.lexsort((chunk[:, 1], chunk[:, 0]))  # by the high word, which look-ups binary-search
            tensors = {
                "hashes": torch.from_numpy(np.ascontiguousarray(chunk[order])),
                "features": features[start : start + PART_ROWS][torch.from_numpy(order)].contiguous(),
            }
            data = save(tensors, metadata={"format": PART_FORMAT})
            name = f"part-{hashlib.blake2b(data, digest_size=16).hexdigest()}.safetensors"
            written.append(atomic_write_bytes(self.folder / name, data))
        return written

    def _refresh(self) -> None:
        """Check and open the parts this process has not seen yet; forget those moved aside meanwhile."""
        present = sorted(self.folder.glob("part-*.safetensors")) if self.folder.is_dir() else []
        self._parts = {path: self._parts.get(path) or _Part.open(path) for path in present}
        self._parts = {path: part for path, part in self._parts.items() if part is not None}

    def _locate(self, identities: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(part index or -1, row) of each identity, by binary search in each part's memory-mapped hash column."""
        self._refresh()
        wanted = identity_hashes(identities)
        part_of = np.full(len(identities), -1, dtype=np.int64)
        row_of = np.zeros(len(identities), dtype=np.int64)
        for index, part in enumerate(self._parts.values()):
            todo = np.flatnonzero(part_of < 0)
            if not len(todo) or not len(part.hashes):
                continue
            rows = np.minimum(np.searchsorted(part.hashes[:, 0], wanted[todo, 0]), len(part.hashes) - 1)
            found = np.all(part.hashes[rows] == wanted[todo], axis=1)
            part_of[todo[found]], row_of[todo[found]] = index, rows[found]
        return part_of, row_of


def identity_hashes(identities: Sequence[str]) -> np.ndarray:
    """(N, 2) int64: a 128-bit hash of each identity (a collision is as likely as two random UUIDs being equal)."""
    digest = b"".join(hashlib.blake2b(identity.encode(), digest_size=16).digest() for identity in identities)
    return np.frombuffer(digest, dtype="<i8").reshape(-1, 2) if identities else np.zeros((0, 2), dtype="<i8")


class _Part:
    """A checked part: memory maps of its sorted hash column and of its feature rows."""

    def __init__(self, hashes: np.ndarray, features: np.ndarray):
        self.hashes, self.features = hashes, features

    @classmethod
    def open(cls, path: Path) -> _Part | None:
        """The part, or None when it is gone (moved by another process) or damaged (then moved aside)."""
        from negation_plugins.atomic import set_aside

        try:
            header_size, header = _checked_header(path)
        except FileNotFoundError:
            return None
        except _Damaged as damage:
            set_aside(path, str(damage))
            return None
        maps = {}
        for name, dtype in (("hashes", "<i8"), ("features", "<f2")):
            begin = header[name]["data_offsets"][0]
            shape = tuple(header[name]["shape"])
            maps[name] = np.memmap(path, dtype=dtype, mode="r", offset=8 + header_size + begin, shape=shape)
        return cls(maps["hashes"], maps["features"])


class _Damaged(Exception):
    pass


def _checked_header(path: Path) -> tuple[int, dict]:
    """(header size, header) of a complete part; :class:`_Damaged` says why not (no part header, a part of an
    earlier format, or bytes that do not hash to its name)."""
    with path.open("rb") as handle:
        try:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        except (struct.error, ValueError) as error:
            raise _Damaged(f"no readable header: {error}") from None
        if not isinstance(header, dict) or {"hashes", "features"} - set(header):
            earlier = isinstance(header, dict) and "images" in (header.get("__metadata__") or {})
            raise _Damaged("written by an earlier version of the store" if earlier else f"not a {PART_FORMAT} part")
        handle.seek(0)
        digest = hashlib.blake2b(digest_size=16)
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    if path.name != f"part-{digest.hexdigest()}.safetensors":
        raise _Damaged("its bytes do not match the checksum in its name: truncated or overwritten")
    return size, header


def build_feature_table(
    accelerator, clip, preprocess, files: list[Path], root: str | os.PathLike, workers: int, progress: bool
) -> tuple[torch.Tensor, dict]:
    """Features of ``files`` (rows in the same order, fp16 on CPU) from the store, embedding what it lacks.

    Returns (table, counts) with counts = {"computed": images embedded by all processes together,
    "from_store": images found in the store, "per_process": images each process embedded}.
    """
    store = FeatureStore(root, store_key(clip.visual, preprocess))
    identities = [image_identity(f) for f in files]
    missing = store.missing(identities)
    accelerator.wait_for_everyone()  # all processes list what is missing before any of them writes a part
    mine = missing[accelerator.process_index :: accelerator.num_processes]
    by_identity = {identity: file for identity, file in zip(identities, files)}
    if mine:
        store.write(mine, embed_files(clip, preprocess, [by_identity[i] for i in mine], workers, progress))
    accelerator.wait_for_everyone()
    # Normally empty; not when another run sharing the store changed what our processes saw as missing, when a part
    # was moved aside meanwhile, or when the store is not shared by our processes.
    unseen = store.missing(missing)
    if unseen:
        logger.warning(
            "feature store %s: %d image features other processes should have written are not there; embedding them "
            "here (is --feature-store on a filesystem all processes share?)",
            store.folder,
            len(unseen),
        )
        store.write(unseen, embed_files(clip, preprocess, [by_identity[i] for i in unseen], workers, progress))
    table = store.get(identities) if identities else torch.empty(0)
    per_process = accelerator.gather(torch.tensor([len(mine) + len(unseen)], device=accelerator.device)).tolist()
    counts = {
        "computed": sum(per_process),
        "from_store": len(set(identities)) - len(missing),
        "per_process": per_process,
    }
    return table, counts
