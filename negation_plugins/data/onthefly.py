"""TNG-CLIP's on-the-fly negation: a collate-time transform building true negated captions for each batch.

For image i it returns
* ``hybrid[i]``: caption i + the absence of a HARD object: an object of the most similar other image in the batch
  (image-image cosine, diagonal masked) that image i does not have (from ``objects`` when given, else nouns of
  that image's caption missing from caption i);
* ``full[i]``: the negation of another image's whole caption ("this image does not show {caption j}");
* ``hard_objects[i]``: the object negated in ``hybrid[i]`` (None when no object could be found: ``hybrid[i]`` is
  then the original caption, counted in ``stats["no_hard_object"]``).

Rule-based templates only (microseconds per caption), deterministic for a given seed and sequence of batches.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence

from .language import DETERMINERS, PHRASE_BOUNDARIES, mentions, singularize
from .negators import CONTEXT_LENGTH, full, hybrid
from .vocabulary import COCO_CATEGORIES

_TOKEN = re.compile(r"[a-z]+|[,.;:!?]")
# Words that are never a hard object: phrase boundaries (except the verbs among them) plus scene words.
_NOT_NOUNS = (PHRASE_BOUNDARIES - {"carrying", "eating", "holding", "riding", "wearing"}) | frozenset(
    [
        "back",
        "background",
        "be",
        "drawing",
        "front",
        "here",
        "image",
        "it",
        "its",
        "left",
        "middle",
        "photo",
        "picture",
        "right",
        "side",
        "some",
        "that",
        "there",
        "this",
        "top",
        "view",
    ]
)

NEAREST_RANKED = 4
_VERB_FORM = re.compile(r"..(ing|ed)$")
_ING_NOUNS = frozenset(
    ["building", "ceiling", "painting", "clothing", "bedding", "railing", "pudding", "wedding", "sled"]
)


def caption_nouns(caption: str, vocabulary: Sequence[str] = ()) -> list[str]:
    """Object nouns of a caption without a POS tagger: vocabulary objects it mentions, then the head word of
    each determiner-led phrase ('a small red car parked ...' -> 'car')."""
    found = [o for o in vocabulary if mentions(caption, o)]
    tokens = _TOKEN.findall(caption.lower())
    for k, token in enumerate(tokens):
        if token not in DETERMINERS:
            continue
        head = None
        for word in tokens[k + 1 : k + 5]:
            if word in _NOT_NOUNS or word in DETERMINERS or not word.isalpha():
                break
            if head is not None and _VERB_FORM.search(word) and word not in _ING_NOUNS:
                break  # 'a red car parked', 'two cats sleeping': the participle follows the head
            head = word
        if head is not None and len(head) > 2:
            noun = singularize(head)
            if noun not in found and not any(mentions(f, noun) for f in found):
                found.append(noun)
    return found


def _then_the_rest(i: int, ranked: list[int], n: int):
    """``ranked``, then every other index except ``i`` (generated only if the ranked ones are exhausted)."""
    yield from ranked
    yield from (j for j in range(n) if j != i and j not in ranked)


class OnTheFlyNegation:
    """Call per batch: ``otf(captions, image_embeds=None, objects=None) -> dict(hybrid, full, hard_objects)``."""

    def __init__(
        self, seed: int = 0, vocabulary: Sequence[str] = COCO_CATEGORIES, context_length: int = CONTEXT_LENGTH
    ):
        self.rng = random.Random(seed)
        self.vocabulary = tuple(vocabulary)
        self.context_length = context_length
        self.stats: Counter = Counter()

    def __call__(self, captions: Sequence[str], image_embeds=None, objects: Sequence[Sequence[str]] | None = None):
        n = len(captions)
        if n < 2:
            raise ValueError(f"on-the-fly negation needs at least 2 captions per batch, got {n}")
        if objects is not None and len(objects) != n:
            raise ValueError(f"got {len(objects)} object lists for {n} captions")
        if image_embeds is not None and len(image_embeds) != n:
            raise ValueError(f"got {len(image_embeds)} image embeddings for {n} captions")
        order = self._neighbours(n, image_embeds)
        nouns: dict[int, list[str]] = {}
        hybrids, fulls, hard = [], [], []
        for i, caption in enumerate(captions):
            obj = self._hard_object(i, captions, objects, order[i], nouns)
            text = hybrid(caption, obj, self.rng, self.context_length) if obj is not None else None
            if text is None:
                self.stats["no_hard_object"] += 1
                obj, text = None, caption
            hybrids.append(text)
            hard.append(obj)
            fulls.append(self._full(i, captions))
        self.stats["batches"] += 1
        return {"hybrid": hybrids, "full": fulls, "hard_objects": hard}

    def _neighbours(self, n: int, image_embeds):
        """Per image, the other images from most to least similar (random order without embeddings).

        Only the few nearest are ranked up front (the hard object nearly always comes from them); the rest
        follow in index order as a last resort.
        """
        if image_embeds is None:
            orders = []
            for i in range(n):
                others = [j for j in range(n) if j != i]
                self.rng.shuffle(others)
                orders.append(others)
            return orders
        import torch

        with torch.no_grad():
            embeds = torch.nn.functional.normalize(image_embeds.detach().float(), dim=-1)
            similarity = embeds @ embeds.T
            similarity.fill_diagonal_(float("-inf"))
            nearest = similarity.topk(min(NEAREST_RANKED, n - 1), dim=1).indices.tolist()
        return [_then_the_rest(i, ranked, n) for i, ranked in enumerate(nearest)]

    def _hard_object(self, i, captions, objects, neighbours, nouns) -> str | None:
        own = set(objects[i]) if objects is not None else None
        for j in neighbours:
            if objects is not None:
                candidates = [o for o in objects[j] if o not in own]
            else:
                if j not in nouns:
                    nouns[j] = caption_nouns(captions[j], self.vocabulary)
                candidates = nouns[j]
            candidates = [o for o in candidates if not mentions(captions[i], o)]
            if candidates:
                return candidates[0] if len(candidates) == 1 else self.rng.choice(candidates)
        return None

    def _full(self, i: int, captions: Sequence[str]) -> str:
        """Negation of a random other caption that differs from caption i; when every other caption is the same
        or already negated, the original caption (also true), counted in ``stats["no_full_negation"]``."""
        n = len(captions)
        start = self.rng.randrange(n - 1)
        for step in range(n - 1):
            j = (i + 1 + (start + step) % (n - 1)) % n
            if captions[j].strip().lower() == captions[i].strip().lower():
                continue
            text = full(captions[j], self.rng, self.context_length)
            if text is not None:
                return text
        self.stats["no_full_negation"] += 1
        return captions[i]
