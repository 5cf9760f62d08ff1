"""What every benchmark shares: data errors with file+row, an optional skip-and-count mode, image path
resolution, batched encoding with a content-addressed text-embedding cache, and tie-pessimistic ranks."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from ..factory import ClipBundle
from ..images import load_rgb  # noqa: F401 (benchmarks import it from here)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class BenchmarkDataError(ValueError):
    """A benchmark file or row that cannot be scored (names the file and the row)."""


class RowProblems:
    """Collects bad rows: raises at the first one, or (``skip_bad``) counts them for the report."""

    def __init__(self, source: str | Path, skip_bad: bool = False):
        self.source = str(source)
        self.skip_bad = skip_bad
        self.messages: list[str] = []

    def bad(self, row, message: str) -> None:
        text = f"{self.source}: row {row}: {message}"
        if not self.skip_bad:
            raise BenchmarkDataError(text + " (pass skip_bad=True / --skip-bad to skip and count such rows)")
        self.messages.append(text)

    def summary(self) -> dict:
        return {"n_skipped": len(self.messages), "skipped": self.messages[:20]}


def read_image_header(path: Path) -> str | None:
    """None if ``path`` is a readable image, else why not (only the header is read: cheap)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):  # opening parses the header; pixels are read later, when encoding
            pass
    except FileNotFoundError:
        return f"image file not found: {path}"
    except (UnidentifiedImageError, OSError) as err:
        return f"unreadable image {path}: {err}"
    return None


def resolve_image(name: str, root: str | Path | None, base_dir: str | Path | None = None) -> tuple[Path | None, str]:
    """Find an image named in a benchmark file: ``root/name``, then ``root/basename(name)`` (public files carry
    their authors' absolute paths), then ``name`` itself / relative to the benchmark file's folder.

    Returns ``(path, "")`` or ``(None, message listing the paths tried)``.
    """
    name = str(name)
    tried = []
    if root is not None:
        tried += [Path(root) / name.lstrip("/"), Path(root) / Path(name).name]
    path = Path(name)
    tried.append(path)
    if base_dir is not None and not path.is_absolute():
        tried.append(Path(base_dir) / name)
    for candidate in dict.fromkeys(tried):
        if candidate.is_file():
            problem = read_image_header(candidate)
            return (None, problem) if problem else (candidate, "")
    hint = "" if root is not None else " (pass the image folder with images=DIR)"
    return None, f"image {name!r} not found; tried {', '.join(str(p) for p in dict.fromkeys(tried))}{hint}"


def model_fingerprint(clip: ClipBundle) -> str:
    """Content hash of the weights and tokenizer settings: equal models share cache entries, any change misses."""
    digest = hashlib.sha256()
    digest.update(f"{type(clip.tokenizer).__name__}:{clip.context_length}".encode())
    for name, tensor in sorted(clip.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


class TextEmbeddingCache:
    """Text embeddings keyed by (model fingerprint, caption): in memory, and in ``directory`` when given
    (one safetensors file per model, written atomically by :meth:`save`)."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory is not None else None
        self._models: dict[str, dict[str, torch.Tensor]] = {}
        self._dirty: set[str] = set()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _file(self, model_key: str) -> Path:
        return self.directory / f"text-{model_key[:32]}.safetensors"

    def _table(self, model_key: str) -> dict[str, torch.Tensor]:
        if model_key not in self._models:
            table = {}
            if self.directory is not None and self._file(model_key).is_file():
                from safetensors.torch import load_file

                table = load_file(str(self._file(model_key)))
            self._models[model_key] = table
        return self._models[model_key]

    def get(self, model_key: str, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        table = self._table(model_key)
        found = {t: table[k] for t in texts if (k := self._key(t)) in table}
        self.hits += len(found)
        self.misses += len(texts) - len(found)
        return found

    def put(self, model_key: str, embeddings: dict[str, torch.Tensor]) -> None:
        table = self._table(model_key)
        for text, emb in embeddings.items():
            table[self._key(text)] = emb.detach().cpu().contiguous()
        if embeddings:
            self._dirty.add(model_key)

    def save(self) -> None:
        """Write changed models' tables to ``directory`` (no-op for a memory-only cache)."""
        if self.directory is None:
            return
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        for model_key in sorted(self._dirty):
            target = self._file(model_key)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            os.close(fd)
            try:
                save_file(self._models[model_key], tmp)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        self._dirty.clear()

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses}


class Encoder:
    """Batched, progress-reporting encoding of one model's texts and images (normalized, float32, CPU).

    Texts are de-duplicated and go through the cache; image files are encoded once per encoder.
    """

    def __init__(
        self, clip: ClipBundle, cache: TextEmbeddingCache | None = None, batch_size: int = 64, progress: bool = True
    ):
        self.clip = clip
        self.cache = cache
        self.batch_size = int(batch_size)
        self.progress = progress
        self._model_key: str | None = None
        self._image_files: dict[Path, torch.Tensor] = {}

    @property
    def model_key(self) -> str:
        if self._model_key is None:
            self._model_key = model_fingerprint(self.clip)
        return self._model_key

    def _bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="item", disable=not self.progress or total == 0, leave=False)

    def texts(self, texts: Sequence[str], desc: str = "texts") -> torch.Tensor:
        unique = list(dict.fromkeys(texts))
        known = self.cache.get(self.model_key, unique) if self.cache is not None else {}
        todo = [t for t in unique if t not in known]
        new = {}
        with self._bar(len(todo), f"encode {desc}") as bar:
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                embs = self.clip.encode_text(chunk, batch_size=self.batch_size).float().cpu()
                new.update(zip(chunk, embs))
                bar.update(len(chunk))
        if self.cache is not None:
            self.cache.put(self.model_key, new)
        known.update(new)
        if not texts:
            return torch.empty(0, 0)
        return torch.stack([known[t] for t in texts])

    def _encode_pil(self, images: Sequence) -> torch.Tensor:
        if self.clip.preprocess is None:
            raise ValueError(f"{self.clip.spec!r} has no image preprocessing: cannot encode images")
        batch = torch.stack([self.clip.preprocess(img) for img in images])
        return self.clip.encode_image(batch, batch_size=self.batch_size).float().cpu()

    def images(self, images: Sequence, desc: str = "images") -> torch.Tensor:
        """Encode PIL images (e.g. crops)."""
        out = []
        with self._bar(len(images), f"encode {desc}") as bar:
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size]
                out.append(self._encode_pil(chunk))
                bar.update(len(chunk))
        return torch.cat(out) if out else torch.empty(0, 0)

    def image_files(self, paths: Sequence[Path], desc: str = "images") -> torch.Tensor:
        """Encode image files, each distinct file once."""
        todo = [p for p in dict.fromkeys(paths) if p not in self._image_files]
        with self._bar(len(todo), f"encode {desc}") as bar:
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                embs = self._encode_pil([load_rgb(p) for p in chunk])
                self._image_files.update(zip(chunk, embs))
                bar.update(len(chunk))
        if not paths:
            return torch.empty(0, 0)
        return torch.stack([self._image_files[p] for p in paths])


def encoder_for(clip: ClipBundle, encoder: Encoder | None, batch_size: int, progress: bool) -> Encoder:
    """The caller's shared encoder (same model) or a fresh uncached one."""
    if encoder is None:
        return Encoder(clip, batch_size=batch_size, progress=progress)
    if encoder.clip is not clip:
        raise ValueError("the encoder passed to a benchmark wraps a different model than the one being scored")
    return encoder


def pessimistic_rank(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Per row, how many negatives score at least as high as the best positive (0 = ranked first).

    ``scores`` (N, M), ``positive`` (N, M) bool. Ties count against the model, so a constant model scores 0.
    """
    best = scores.masked_fill(~positive, float("-inf")).max(dim=1, keepdim=True).values
    return ((scores >= best) & ~positive).sum(dim=1)


def recalls(ranks: torch.Tensor, ks: Sequence[int], prefix: str) -> dict[str, float]:
    return {f"{prefix}R@{k}": float((ranks < k).float().mean()) if len(ranks) else float("nan") for k in ks}
