"""What every benchmark shares: data errors with file+row, an optional skip-and-count mode, image path
resolution, the COCO captions reader, batched encoding (images decoded in DataLoader workers, bf16 autocast on
request) with embedding caches (texts keyed by the whole model, images by the vision tower and preprocessing), and
retrieval ranks where ties count against the model."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from ..atomic import DiskFullError, atomic_write, set_aside
from ..data.io import check_image
from ..factory import ClipBundle
from ..images import ImageDecodeError, load_rgb
from ..textfiles import read_text

logger = logging.getLogger(__name__)

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
            problem = check_image(candidate)
            return (None, f"unreadable image {candidate}: {problem}") if problem else (candidate, "")
    hint = "" if root is not None else " (pass the image folder with images=DIR)"
    return None, f"image {name!r} not found; tried {', '.join(str(p) for p in dict.fromkeys(tried))}{hint}"


def read_coco_pairs(
    captions, images=None, skip_bad=False, limit=None
) -> tuple[list[tuple[Path, list[str]]], RowProblems]:
    """``[(image path, [its captions])]`` from a COCO captions JSON, images in file order (the first ``limit``
    that have captions), plus the problems collector; images without captions are left out."""
    path = Path(captions)
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise BenchmarkDataError(f"{path}: not valid JSON: {err}") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise BenchmarkDataError(f"{path}: expected COCO captions JSON with 'images' and 'annotations' lists")
    problems = RowProblems(path, skip_bad)
    by_image: dict = {}
    for index, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str) or "image_id" not in ann:
            problems.bad(f"annotations[{index}]", "needs 'image_id' and a string 'caption'")
            continue
        by_image.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    pairs = []
    for index, image in enumerate(data["images"]):
        if limit is not None and len(pairs) >= int(limit):
            break
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            problems.bad(f"images[{index}]", "needs 'id' and 'file_name'")
            continue
        if image["id"] not in by_image:
            continue  # an image without captions takes no part in caption retrieval
        file, why = resolve_image(image["file_name"], images, path.parent)
        if file is None:
            problems.bad(f"images[{index}]", why)
            continue
        pairs.append((file, by_image[image["id"]]))
    return pairs, problems


def _hash_weights(digest, module: torch.nn.Module) -> None:
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")


def model_fingerprint(clip: ClipBundle) -> str:
    """Content hash of the weights and tokenizer settings: equal models share cache entries, any change misses."""
    digest = hashlib.sha256()
    digest.update(f"{type(clip.tokenizer).__name__}:{clip.context_length}".encode())
    for correction in clip.corrections:  # corrected embeddings must not share entries with plain ones
        digest.update(correction.describe().encode())
    _hash_weights(digest, clip.model)
    return digest.hexdigest()


def vision_fingerprint(clip: ClipBundle) -> str:
    """Content hash of what an image embedding depends on: the vision tower's weights and the preprocessing.

    The text tower and corrections are left out, so a base model and its text-only fine-tunes share entries.
    """
    digest = hashlib.sha256(b"vision:")
    digest.update(re.sub(r" at 0x[0-9a-f]+", "", repr(clip.preprocess)).encode())  # no memory addresses
    _hash_weights(digest, clip.model.visual)
    return digest.hexdigest()


def image_file_key(path: Path) -> str:
    """Cache key of an image file: its resolved path, size and modification time (a rewritten file misses)."""
    stat = Path(path).stat()
    return f"{Path(path).resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"


class EmbeddingCache:
    """Embeddings keyed by (model key, item): in memory, and in ``directory`` when given (one safetensors file
    ``{kind}-{model key}.safetensors`` per model key, written atomically by :meth:`save` with a checksum of its
    entries). A file that does not load or whose entries do not match its checksum is logged, moved aside
    (:func:`~negation_plugins.atomic.set_aside`) and its entries computed again; a full disk when saving is logged
    and the evaluation goes on (the cache only saves time)."""

    kind = ""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory is not None else None
        self._models: dict[str, dict[str, torch.Tensor]] = {}
        self._dirty: set[str] = set()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(item: str) -> str:
        return hashlib.sha256(item.encode("utf-8")).hexdigest()

    def _file(self, model_key: str) -> Path:
        return self.directory / f"{self.kind}-{model_key[:32]}.safetensors"

    def _table(self, model_key: str) -> dict[str, torch.Tensor]:
        if model_key not in self._models:
            table = {}
            if self.directory is not None and self._file(model_key).is_file():
                table = _load_checked(self._file(model_key))
            self._models[model_key] = table
        return self._models[model_key]

    def get(self, model_key: str, items: Sequence[str]) -> dict[str, torch.Tensor]:
        table = self._table(model_key)
        found = {t: table[k] for t in items if (k := self._key(t)) in table}
        self.hits += len(found)
        self.misses += len(items) - len(found)
        return found

    def put(self, model_key: str, embeddings: dict[str, torch.Tensor]) -> None:
        table = self._table(model_key)
        for item, emb in embeddings.items():
            table[self._key(item)] = emb.detach().cpu().contiguous()
        if embeddings:
            self._dirty.add(model_key)

    def save(self) -> None:
        """Write changed models' tables to ``directory`` (no-op for a memory-only cache)."""
        if self.directory is None:
            return
        from safetensors.torch import save_file

        for model_key in sorted(self._dirty):
            table = self._models[model_key]
            metadata = {"checksum": _checksum(table)}
            try:
                atomic_write(self._file(model_key), lambda tmp, t=table, m=metadata: save_file(t, str(tmp), metadata=m))
            except DiskFullError as error:
                logger.warning("embedding cache not saved: %s", error.message)
        self._dirty.clear()

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses}


def _checksum(table: dict[str, torch.Tensor]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for key in sorted(table):
        digest.update(key.encode())
        digest.update(table[key].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load_checked(path: Path) -> dict[str, torch.Tensor]:
    """The entries of a cache file, or none when it is damaged (then it is moved aside)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get("checksum")
            table = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        set_aside(path, f"unreadable: {error}")
        return {}
    if recorded != _checksum(table):
        set_aside(path, "its entries do not match the checksum recorded when it was written")
        return {}
    return table


class TextEmbeddingCache(EmbeddingCache):
    """Text embeddings keyed by (model fingerprint, caption)."""

    kind = "text"


class ImageEmbeddingCache(EmbeddingCache):
    """Image-file embeddings keyed by (vision fingerprint, :func:`image_file_key`)."""

    kind = "image"


class _DecodedImages(torch.utils.data.Dataset):
    """Image files decoded and preprocessed, in DataLoader workers when there are any."""

    def __init__(self, paths: Sequence[Path], preprocess):
        self.paths, self.preprocess = list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor | str:
        try:
            return self.preprocess(load_rgb(self.paths[index]))
        except ImageDecodeError as error:  # handed back, not raised in a worker: the message stays one line
            return str(error)


def _stack_or_error(items: list) -> torch.Tensor | str:
    errors = [item for item in items if isinstance(item, str)]
    return errors[0] if errors else torch.stack(items)


class Encoder:
    """Batched, progress-reporting encoding of one model's texts and images (normalized, float32, CPU).

    Texts are de-duplicated and go through ``cache``; image files go through ``image_cache`` (a memory-only one
    unless given), are decoded by ``workers`` DataLoader processes and encoded once per vision tower. With
    ``dtype=torch.bfloat16`` the model runs under autocast; the dtype is part of every cache key.
    """

    def __init__(
        self,
        clip: ClipBundle,
        cache: TextEmbeddingCache | None = None,
        batch_size: int = 64,
        progress: bool = True,
        *,
        image_cache: ImageEmbeddingCache | None = None,
        workers: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        self.clip = clip
        self.cache = cache
        self.image_cache = image_cache if image_cache is not None else ImageEmbeddingCache()
        self.batch_size = int(batch_size)
        self.progress = progress
        self.workers = int(workers)
        self.dtype = dtype
        self._model_key: str | None = None
        self._vision_key: str | None = None

    @property
    def model_key(self) -> str:
        if self._model_key is None:
            self._model_key = f"{model_fingerprint(self.clip)}:{self.dtype}"
        return self._model_key

    @property
    def vision_key(self) -> str:
        if self._vision_key is None:
            self._check_images()
            self._vision_key = f"{vision_fingerprint(self.clip)}:{self.dtype}"
        return self._vision_key

    def _check_images(self) -> None:
        if not self.clip.has_vision:
            raise ValueError(f"{self.clip.spec!r} is a text-only model: it has no vision tower to encode images")
        if self.clip.preprocess is None:
            raise ValueError(f"{self.clip.spec!r} has no image preprocessing: cannot encode images")

    def _autocast(self):
        return torch.autocast(self.clip.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def _bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="item", disable=not self.progress or total == 0, leave=False)

    def texts(self, texts: Sequence[str], desc: str = "texts") -> torch.Tensor:
        unique = list(dict.fromkeys(texts))
        known = self.cache.get(self.model_key, unique) if self.cache is not None else {}
        todo = [t for t in unique if t not in known]
        new = {}
        with self._bar(len(todo), f"encode {desc}") as bar, self._autocast():
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

    def _encode_batch(self, batch: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.clip.encode_image(batch, batch_size=self.batch_size).float().cpu()

    def images(self, images: Sequence, desc: str = "images") -> torch.Tensor:
        """Encode PIL images (e.g. crops)."""
        self._check_images()
        out = []
        with self._bar(len(images), f"encode {desc}") as bar:
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size]
                out.append(self._encode_batch(torch.stack([self.clip.preprocess(img) for img in chunk])))
                bar.update(len(chunk))
        return torch.cat(out) if out else torch.empty(0, 0)

    def image_files(self, paths: Sequence[Path], desc: str = "images") -> torch.Tensor:
        """Encode image files, each distinct file once per vision tower (and never again with an on-disk cache)."""
        if not paths:
            return torch.empty(0, 0)
        keys = {path: image_file_key(path) for path in dict.fromkeys(paths)}
        known = self.image_cache.get(self.vision_key, list(keys.values()))
        todo = [path for path, key in keys.items() if key not in known]
        loader = torch.utils.data.DataLoader(
            _DecodedImages(todo, self.clip.preprocess),
            batch_size=self.batch_size,
            num_workers=self.workers if len(todo) > self.batch_size else 0,  # one batch: not worth the start-up
            pin_memory=self.clip.device.type == "cuda",
            collate_fn=_stack_or_error,
        )
        new, done = {}, 0
        with self._bar(len(todo), f"encode {desc}") as bar:
            for batch in loader:
                if isinstance(batch, str):
                    raise ImageDecodeError(batch)
                embs = self._encode_batch(batch)
                new.update(zip((keys[p] for p in todo[done : done + len(embs)]), embs))
                done += len(embs)
                bar.update(len(embs))
        self.image_cache.put(self.vision_key, new)
        known.update(new)
        return torch.stack([known[keys[p]] for p in paths])


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


def _positive_ranks(queries, query_ids, candidates, candidate_ids, block_elements: int) -> torch.Tensor:
    """:func:`pessimistic_rank` of each query's positives (same id) among all candidates, a block of queries at a
    time so that at most ``block_elements`` scores exist at once."""
    rows = max(1, int(block_elements) // max(1, len(candidates)))
    ranks = torch.empty(len(queries), dtype=torch.long)  # filled in place: no small allocations between blocks
    for start in range(0, len(queries), rows):
        block = slice(start, start + rows)
        positive = query_ids[block, None] == candidate_ids[None]
        ranks[block] = pessimistic_rank(queries[block] @ candidates.T, positive)
    return ranks


def retrieval_recalls(
    image_embs: torch.Tensor,
    text_embs: torch.Tensor,
    owners: Sequence[int] | torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    directions: Sequence[str] = ("t2i", "i2t"),
    block_elements: int = 1 << 20,
) -> dict[str, float]:
    """Image<->text Recall@K, the one retrieval scorer of every benchmark: ``t2i_R@K`` and/or ``i2t_R@K``.

    ``owners[j]`` is the index of the image that caption ``j`` describes. text->image: a caption is a hit at K when
    fewer than K other images score at least as high as its own; image->text: an image is a hit at K when fewer
    than K captions of other images score at least as high as its best own caption. Ties count against the model
    (a constant model scores 0, not 1). Queries are scored a block at a time against all candidates and only
    ranks are kept, so memory stays at ``block_elements`` scores however many images and captions there are.
    """
    owners = torch.as_tensor(owners, dtype=torch.long)
    image_ids = torch.arange(len(image_embs))
    unknown = set(directions) - {"t2i", "i2t"}
    if unknown:
        raise ValueError(f"retrieval directions are 't2i' and 'i2t', not {sorted(unknown)}")
    result = {}
    if "t2i" in directions:
        ranks = _positive_ranks(text_embs, owners, image_embs, image_ids, block_elements)
        result.update(_recalls(ranks, ks, "t2i_"))
    if "i2t" in directions:
        ranks = _positive_ranks(image_embs, image_ids, text_embs, owners, block_elements)
        result.update(_recalls(ranks, ks, "i2t_"))
    return result


def _recalls(ranks: torch.Tensor, ks: Sequence[int], prefix: str) -> dict[str, float]:
    return {f"{prefix}R@{int(k)}": float((ranks < int(k)).float().mean()) if len(ranks) else float("nan") for k in ks}


def read_json_items(file, expected: type, what: str, skip_bad: bool = False) -> tuple[list | dict, RowProblems]:
    """A benchmark's JSON file of items and the collector of its bad items; the file is refused in one line when it
    does not parse or is not ``expected`` (``what`` says what was wanted, e.g. "a list of items")."""
    path = Path(file)
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise BenchmarkDataError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, expected):
        raise BenchmarkDataError(f"{path}: expected {what}, got {type(data).__name__}")
    return data, RowProblems(path, skip_bad)


def retrieval_of_groups(enc: Encoder, groups, ks, directions=("t2i", "i2t"), what: str = "retrieval") -> dict:
    """Recall@K over ``groups`` of ``(image_path, [its captions])``, with the image and caption counts."""
    image_embs = enc.image_files([image for image, _ in groups], desc=f"{what} images")
    captions = [c for _, caps in groups for c in caps]
    owners = [i for i, (_, caps) in enumerate(groups) for _ in caps]
    text_embs = enc.texts(captions, desc=f"{what} captions")
    recalls = retrieval_recalls(image_embs, text_embs, owners, ks, directions=directions)
    return {**recalls, "n_images": len(groups), "n_captions": len(captions)}


def true_over_false(enc: Encoder, items, what: str) -> dict:
    """Pairwise accuracy over ``(image_path, true_caption, false_caption)``: the true caption must score higher."""
    image_embs = enc.image_files([image for image, _, _ in items], desc=f"{what} images")
    true = enc.texts([t for _, t, _ in items], desc=f"{what} true captions")
    false = enc.texts([f for _, _, f in items], desc=f"{what} false captions")
    correct = (image_embs * true).sum(1) > (image_embs * false).sum(1)
    return {"accuracy": float(correct.float().mean()), "n_items": len(items)}
