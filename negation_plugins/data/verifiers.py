"""Absence verifiers: decide whether an object is really absent from an image before we write "no X" as true.

Contract: a ``Verifier`` class (registered by class, built with its options) whose
``absent(items, objects) -> list[bool]`` says, per item, whether ``objects[i]`` is absent from ``items[i]``'s
image (True = keep the absence caption). ``stats`` counts ``checked``/``rejected``.

Built-in: ``annotations`` (COCO instances ground truth), ``vqa`` (a transformers VQA / image-text-to-text model
asked "Is there a X in this image? Answer yes or no.", as NegationCLIP does with LLaVA), ``detector`` (an OWL-ViT
family zero-shot detector with a score threshold, as NegBench does) and ``clip`` (a CLIP zero-shot presence
probability over the object vocabulary).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ..hookspecs import hookimpl
from .io import CaptionItem, DataError
from .language import with_article


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

    def absent(self, items: Sequence[CaptionItem], objects: Sequence[str]) -> list[bool]:
        verdicts = self._absent(items, objects)
        self.stats["checked"] += len(verdicts)
        self.stats["rejected"] += sum(not v for v in verdicts)
        return verdicts

    def _absent(self, items: Sequence[CaptionItem], objects: Sequence[str]) -> list[bool]:
        raise NotImplementedError

    def set_vocabulary(self, vocabulary: Sequence[str]) -> None:
        """The object names of the data set (verifiers that score against alternatives use them)."""

    def open_images(self, items: Sequence[CaptionItem]):
        from PIL import Image

        images = []
        for item in items:
            path = self.images / item.image
            try:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            except (OSError, ValueError) as e:
                raise DataError(f"{path}: cannot read image for verifier {self.name!r}: {e}") from None
        return images


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


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


class DetectorVerifier(Verifier):
    name = "detector"
    description = "Zero-shot detector (OWL-ViT family, transformers): absent when max box score < threshold"
    needs_images = True

    def __init__(self, images=None, model: str = "google/owlvit-base-patch32", threshold: float = 0.1,
                 prompt: str = "a photo of {a}", batch_size: int = 8, device: str = "cpu"):  # fmt: skip
        super().__init__(images)
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(model).to(device).eval()
        self.threshold, self.prompt, self.batch_size, self.device = threshold, prompt, batch_size, device

    def scores(self, items: Sequence[CaptionItem], objects: Sequence[str]) -> list[float]:
        """Per item, the highest detection probability of its object anywhere in the image."""
        import torch

        out = []
        for batch in _batches(len(items), self.batch_size):
            images = self.open_images([items[i] for i in batch])
            queries = [[self.prompt.format(a=with_article(objects[i]), o=objects[i])] for i in batch]
            inputs = self.processor(text=queries, images=images, return_tensors="pt", padding=True).to(self.device)
            with torch.no_grad():
                logits = self.model(**inputs).logits  # (batch, boxes, queries=1)
            out.extend(logits.sigmoid().amax(dim=(1, 2)).tolist())
        return out

    def _absent(self, items, objects):
        return [score < self.threshold for score in self.scores(items, objects)]


class ClipVerifier(Verifier):
    name = "clip"
    description = "CLIP zero-shot: absent when the object's probability among the vocabulary is < threshold"
    needs_images = True

    def __init__(self, images=None, model: str = "ViT-B-32/openai", threshold: float = 0.2,
                 prompt: str = "a photo of {a}.", batch_size: int = 64, device: str = "cpu"):  # fmt: skip
        super().__init__(images)
        from ..factory import load_clip

        self.clip = load_clip(model, device=device)
        self.threshold, self.prompt, self.batch_size = threshold, prompt, batch_size
        self.vocabulary: list[str] = []
        self._text = None

    def set_vocabulary(self, vocabulary):
        self.vocabulary = list(dict.fromkeys(vocabulary))
        self._text = None

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
            for batch in _batches(len(items), self.batch_size):
                image = self.clip.encode_image(self.open_images([items[i] for i in batch]))
                image = torch.nn.functional.normalize(image.float(), dim=-1)
                probs = (self.clip.logit_scale * image @ text.T).softmax(dim=-1)
                out.extend(probs[r, index[objects[i]]].item() for r, i in enumerate(batch))
        return out

    def _absent(self, items, objects):
        return [p < self.threshold for p in self.probabilities(items, objects)]


class VqaVerifier(Verifier):
    name = "vqa"
    description = (
        "VQA / image-text-to-text model (transformers) asked 'Is there a X in this image?'; absent unless 'yes'"
    )
    needs_images = True

    def __init__(self, images=None, model: str = "llava-hf/llava-v1.6-mistral-7b-hf",
                 question: str = "Is there {a} in this image? Answer yes or no.", batch_size: int = 4,
                 max_new_tokens: int = 5, device: str = "cpu"):  # fmt: skip
        super().__init__(images)
        from transformers import AutoConfig, AutoProcessor

        config = AutoConfig.from_pretrained(model)
        self.classifier = any(a.endswith("ForQuestionAnswering") and "Blip" not in a
                               for a in getattr(config, "architectures", None) or [])  # fmt: skip
        if self.classifier:  # answer classifiers such as ViLT: the label with the highest logit
            from transformers import AutoModelForVisualQuestionAnswering as ModelClass
        else:  # generative: LLaVA, BLIP-VQA, Qwen-VL, ...
            from transformers import AutoModelForImageTextToText as ModelClass
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = ModelClass.from_pretrained(model).to(device).eval()
        self.question, self.batch_size, self.max_new_tokens, self.device = question, batch_size, max_new_tokens, device

    def answers(self, items: Sequence[CaptionItem], objects: Sequence[str]) -> list[str]:
        import torch

        out = []
        for batch in _batches(len(items), self.batch_size):
            images = self.open_images([items[i] for i in batch])
            questions = [self.question.format(a=with_article(objects[i]), o=objects[i]) for i in batch]
            with torch.no_grad():
                if self.classifier:
                    inputs = self.processor(images, questions, return_tensors="pt", padding=True).to(self.device)
                    labels = self.model(**inputs).logits.argmax(-1).tolist()
                    out.extend(self.model.config.id2label[k] for k in labels)
                    continue
                prompts = [self._prompt(q) for q in questions]
                inputs = self.processor(images=images, text=prompts, return_tensors="pt", padding=True).to(self.device)
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
