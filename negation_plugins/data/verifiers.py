"""Absence verifiers: decide whether an object is really absent from an image before we write "no X" as true.

Contract: a ``Verifier`` class (registered by class, built with its options) whose
``absent(items, objects) -> list[bool]`` says, per item, whether ``objects[i]`` is absent from ``items[i]``'s
image (True = keep the absence caption). ``stats`` counts ``checked``/``rejected``.

Built-in: ``annotations`` (COCO instances ground truth), ``vqa`` (a transformers VQA / image-text-to-text model
asked "Is there a X in this image? Answer yes or no.", as NegationCLIP does with LLaVA), ``detector`` (an OWL-ViT
family zero-shot detector with a score threshold, as NegBench does) and ``clip`` (a CLIP zero-shot presence
probability over the object vocabulary).

The model verifiers run on CUDA in bf16 when present (options ``device=``, ``dtype=``), decode images in
``workers`` DataLoader processes, ask ``batch_size`` questions at once, and keep every verdict in a SQLite
``cache`` keyed by (image, object, verifier settings), so a resumed or repeated run never asks twice.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..atomic import DiskFullError, set_aside
from ..devices import pick_device
from ..hookspecs import hookimpl
from .io import CaptionItem, DataError
from .language import with_article


class VerdictCache:
    """(verifier settings, image, object) -> absent, in SQLite: each batch of new verdicts is one committed
    transaction, so a killed run loses at most the batch it was asking. A file SQLite cannot use or whose
    ``PRAGMA quick_check`` fails is logged, moved aside (with its journal) and replaced by an empty cache, so its
    verdicts are asked again; a full disk while saving verdicts raises :class:`~negation_plugins.atomic.DiskFullError`
    (the verdicts committed before stay)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        try:
            self.db = self._connect()
        except sqlite3.OperationalError as e:  # locked, read-only, a folder: not damage, so nothing is moved
            raise DataError(f"{self.path}: cannot use it as the verdict cache ({e}); pass another cache=") from None
        except sqlite3.DatabaseError as e:
            for sidecar in ("-journal", "-wal", "-shm"):
                set_aside(self.path.with_name(self.path.name + sidecar), "the journal of a damaged verdict cache")
            set_aside(self.path, f"not a usable SQLite database: {e}")
            self.db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
        try:
            (verdict,) = db.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {verdict}")
            with db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS verdicts (verifier TEXT, image TEXT, object TEXT, absent INTEGER, "
                    "PRIMARY KEY (verifier, image, object))"
                )
        except BaseException:
            db.close()
            raise
        return db

    def get(self, verifier: str, keys: Sequence[tuple[str, str]]) -> list[bool | None]:
        with self.lock:
            rows = [
                self.db.execute(
                    "SELECT absent FROM verdicts WHERE verifier = ? AND image = ? AND object = ?", (verifier, *key)
                ).fetchone()
                for key in keys
            ]
        return [None if row is None else bool(row[0]) for row in rows]

    def put(self, verifier: str, keys: Sequence[tuple[str, str]], verdicts: Sequence[bool]) -> None:
        try:
            with self.lock, self.db:
                self.db.executemany(
                    "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?)",
                    [(verifier, image, obj, int(v)) for (image, obj), v in zip(keys, verdicts)],
                )
        except sqlite3.OperationalError as e:
            if getattr(e, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL and "disk is full" not in str(e):
                raise
            raise DiskFullError(errno.ENOSPC, self.path) from None


class _ImageFiles:
    """Map-style dataset of image files -> (RGB image, optionally transformed; error message or None)."""

    def __init__(self, paths: Sequence[Path], transform=None):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        from PIL import Image

        try:
            with Image.open(self.paths[index]) as image:
                image = image.convert("RGB")
        except (OSError, ValueError) as e:
            return None, f"{self.paths[index]}: cannot read image: {e}"
        return (image if self.transform is None else self.transform(image)), None


def _as_list(batch):
    return batch


class Verifier:
    """Base class of verifier plugins."""

    name: str = ""
    description: str = ""
    needs_images: bool = False

    def __init__(self, images: str | os.PathLike | None = None, **options):
        if options:
            raise TypeError(f"verifier {self.name!r} got unknown option(s): {', '.join(sorted(options))}")
        self.images = None if images is None else Path(images)
        if self.needs_images and self.images is None:
            raise ValueError(f"verifier {self.name!r} looks at the images: give the image folder (--images)")
        self.stats: Counter = Counter()
        self.cache: VerdictCache | None = None
        self.batch_size, self.workers = 8, 0

    def absent(self, items: Sequence[CaptionItem], objects: Sequence[str]) -> list[bool]:
        """Verdicts from the cache where known; the rest asked of the model (and cached)."""
        verdicts: list[bool | None] = [None] * len(items)
        if self.cache is not None:
            signature = self.signature()
            keys = [(str((self.images / item.image).resolve()), obj) for item, obj in zip(items, objects)]
            verdicts = self.cache.get(signature, keys)
        todo = [i for i, v in enumerate(verdicts) if v is None]
        if todo:
            asked = self._absent([items[i] for i in todo], [objects[i] for i in todo])
            for i, verdict in zip(todo, asked):
                verdicts[i] = verdict
            if self.cache is not None:
                self.cache.put(signature, [keys[i] for i in todo], asked)
        self.stats["checked"] += len(verdicts)
        if self.cache is not None:
            self.stats["cached"] += len(verdicts) - len(todo)
        self.stats["rejected"] += sum(not v for v in verdicts)
        return verdicts

    def _absent(self, items: Sequence[CaptionItem], objects: Sequence[str]) -> list[bool]:
        raise NotImplementedError

    def signature(self) -> str:
        """What a cached verdict depends on besides image and object (name and the settings that change answers)."""
        return self.name

    def set_vocabulary(self, vocabulary: Sequence[str]) -> None:
        """The object names of the data set (verifiers that score against alternatives use them)."""

    def image_batches(self, items: Sequence[CaptionItem], transform=None) -> Iterator[tuple[range, list]]:
        """``(positions, images)`` per ``batch_size`` items, decoded (and ``transform``-ed) by ``workers``
        DataLoader processes while the model works on the previous batch."""
        from torch.utils.data import DataLoader

        paths = [self.images / item.image for item in items]
        workers = self.workers if len(paths) > self.batch_size else 0  # one small batch: no processes to start
        loader = DataLoader(_ImageFiles(paths, transform), batch_size=self.batch_size, num_workers=workers,
                            collate_fn=_as_list)  # fmt: skip
        start = 0
        for batch in loader:
            for _, error in batch:
                if error is not None:
                    raise DataError(f"{error} (verifier {self.name!r})")
            yield range(start, start + len(batch)), [image for image, _ in batch]
            start += len(batch)


class ModelVerifier(Verifier):
    """A verifier with a model: device and dtype, batches, image decoding workers and the verdict cache."""

    needs_images = True

    def __init__(self, images, settings: dict, batch_size: int, device: str | None, dtype: str | None,
                 workers: int | None, cache: str | os.PathLike | None):  # fmt: skip
        super().__init__(images)
        workers = min(4, os.cpu_count() or 1) if workers is None else workers
        if batch_size < 1 or workers < 0:
            raise ValueError(f"verifier {self.name!r}: batch_size must be >= 1 and workers >= 0")
        self.device, self.dtype = pick_device(device, dtype, f"verifier {self.name!r}")
        self.batch_size, self.workers, self.settings = batch_size, workers, settings
        self.cache = VerdictCache(cache) if cache else None

    def signature(self) -> str:
        return json.dumps([self.name, self.settings], sort_keys=True)


class AnnotationVerifier(Verifier):
    name = "annotations"
    description = "Ground truth: absent when the COCO instances JSON has no such object in the image"

    def _absent(self, items, objects):
        verdicts = []
        for item, obj in zip(items, objects):
            if item.objects is None:
                raise DataError(
                    f"verifier 'annotations' needs object annotations (--instances) but image {item.image!r} has none"
                )
            verdicts.append(obj.lower() not in item.objects)
        return verdicts


class DetectorVerifier(ModelVerifier):
    name = "detector"
    description = "Zero-shot detector (OWL-ViT family, transformers): absent when max box score < threshold"

    def __init__(self, images=None, model: str = "google/owlvit-base-patch32", threshold: float = 0.1,
                 prompt: str = "a photo of {a}", batch_size: int = 32, device: str | None = None,
                 dtype: str | None = None, workers: int | None = None, cache: str | None = None):  # fmt: skip
        settings = {"model": model, "threshold": threshold, "prompt": prompt}
        super().__init__(images, settings, batch_size, device, dtype, workers, cache)
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(model, dtype=self.dtype)
        self.model = self.model.to(self.device).eval()
        self.threshold, self.prompt = threshold, prompt

    def scores(self, items: Sequence[CaptionItem], objects: Sequence[str]) -> list[float]:
        """Per item, the highest detection probability of its object anywhere in the image."""
        import torch

        out = []
        for batch, images in self.image_batches(items):
            queries = [[self.prompt.format(a=with_article(objects[i]), o=objects[i])] for i in batch]
            inputs = self.processor(text=queries, images=images, return_tensors="pt", padding=True)
            with torch.no_grad():
                logits = self.model(**inputs.to(device=self.device, dtype=self.dtype)).logits  # (batch, boxes, 1)
            out.extend(logits.float().sigmoid().amax(dim=(1, 2)).tolist())
        return out

    def _absent(self, items, objects):
        return [score < self.threshold for score in self.scores(items, objects)]


class ClipVerifier(ModelVerifier):
    name = "clip"
    description = "CLIP zero-shot: absent when the object's probability among the vocabulary is < threshold"

    def __init__(self, images=None, model: str = "ViT-B-32/openai", threshold: float = 0.2,
                 prompt: str = "a photo of {a}.", batch_size: int = 64, device: str | None = None,
                 dtype: str | None = None, workers: int | None = None, cache: str | None = None):  # fmt: skip
        settings = {"model": model, "threshold": threshold, "prompt": prompt}
        super().__init__(images, settings, batch_size, device, dtype, workers, cache)
        from ..factory import load_clip

        self.clip = load_clip(model, device=self.device)
        self.clip.model.to(self.dtype)
        self.threshold, self.prompt = threshold, prompt
        self.vocabulary: list[str] = []

    def set_vocabulary(self, vocabulary):
        self.vocabulary = list(dict.fromkeys(vocabulary))

    def signature(self) -> str:
        return json.dumps([self.name, self.settings, self.vocabulary], sort_keys=True)  # scored among the vocabulary

    def probabilities(self, items: Sequence[CaptionItem], objects: Sequence[str]) -> list[float]:
        """Per item, softmax probability of its object among the vocabulary (plus the object) for its image."""
        import torch

        names = list(dict.fromkeys([*self.vocabulary, *objects]))
        if len(names) < 2:
            raise ValueError("verifier 'clip' needs at least 2 object names to compare (set_vocabulary)")
        index = {name: k for k, name in enumerate(names)}
        with torch.no_grad():
            text = self.clip.encode_text([self.prompt.format(a=with_article(n), o=n) for n in names])
            text = torch.nn.functional.normalize(text.float(), dim=-1)
            out = []
            for batch, pixels in self.image_batches(items, transform=self.clip.preprocess):
                image = self.clip.encode_image(torch.stack(pixels).to(self.dtype))
                image = torch.nn.functional.normalize(image.float(), dim=-1)
                probs = (self.clip.logit_scale * image @ text.T).softmax(dim=-1)
                out.extend(probs[r, index[objects[i]]].item() for r, i in enumerate(batch))
        return out

    def _absent(self, items, objects):
        return [p < self.threshold for p in self.probabilities(items, objects)]


class VqaVerifier(ModelVerifier):
    name = "vqa"
    description = (
        "VQA / image-text-to-text model (transformers) asked 'Is there a X in this image?'; absent unless 'yes'"
    )

    def __init__(self, images=None, model: str = "llava-hf/llava-v1.6-mistral-7b-hf",
                 question: str = "Is there {a} in this image? Answer yes or no.", batch_size: int = 16,
                 max_new_tokens: int = 5, device: str | None = None, dtype: str | None = None,
                 workers: int | None = None, cache: str | None = None):  # fmt: skip
        settings = {"model": model, "question": question, "max_new_tokens": max_new_tokens}
        super().__init__(images, settings, batch_size, device, dtype, workers, cache)
        from transformers import AutoConfig, AutoProcessor

        config = AutoConfig.from_pretrained(model)
        self.classifier = any(a.endswith("ForQuestionAnswering") and "Blip" not in a
                               for a in getattr(config, "architectures", None) or [])  # fmt: skip
        if self.classifier:  # answer classifiers such as ViLT: the label with the highest logit
            from transformers import AutoModelForVisualQuestionAnswering as ModelClass
        else:  # generative: LLaVA, BLIP-VQA, Qwen-VL, ...
            from transformers import AutoModelForImageTextToText as ModelClass
        self.processor = AutoProcessor.from_pretrained(model)
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None and not self.classifier:
            tokenizer.padding_side = "left"  # batched generation continues every prompt at the same position
        self.model = ModelClass.from_pretrained(model, dtype=self.dtype).to(self.device).eval()
        self.question, self.max_new_tokens = question, max_new_tokens

    def answers(self, items: Sequence[CaptionItem], objects: Sequence[str]) -> list[str]:
        import torch

        out = []
        for batch, images in self.image_batches(items):
            questions = [self.question.format(a=with_article(objects[i]), o=objects[i]) for i in batch]
            with torch.no_grad():
                if self.classifier:
                    inputs = self.processor(images, questions, return_tensors="pt", padding=True)
                    labels = self.model(**inputs.to(device=self.device, dtype=self.dtype)).logits.argmax(-1).tolist()
                    out.extend(self.model.config.id2label[k] for k in labels)
                    continue
                prompts = [self._prompt(q) for q in questions]
                inputs = self.processor(images=images, text=prompts, return_tensors="pt", padding=True)
                inputs = inputs.to(device=self.device, dtype=self.dtype)
                generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
                new_tokens = generated[:, inputs["input_ids"].shape[1] :]
                out.extend(self.processor.batch_decode(new_tokens, skip_special_tokens=True))
        return out

    def _prompt(self, question: str) -> str:
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return question

    def _absent(self, items, objects):
        return ["yes" not in answer.lower() for answer in self.answers(items, objects)]


@hookimpl
def register_verifiers(register):
    register(AnnotationVerifier)
    register(VqaVerifier)
    register(DetectorVerifier)
    register(ClipVerifier)
