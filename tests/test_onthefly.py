"""TNG-CLIP on-the-fly negation: hard objects from the nearest image, full negations, determinism."""

import pytest
import torch

from negation_plugins.data.language import mentions
from negation_plugins.data.onthefly import OnTheFlyNegation, caption_nouns
from negation_plugins.lexicon import count_negations

CAPTIONS = ["a man riding a horse in a field.", "a dog on a couch.", "a red car parked near a tree.",
            "two cats sleeping on a bed."]  # fmt: skip
OBJECTS = [["person", "horse"], ["dog", "couch"], ["car", "tree"], ["cat", "bed"]]


def _embeds_with_nearest(pairs):
    """Image embeddings where image i's nearest other image is pairs[i] (orthogonal base + shared component)."""
    embeds = torch.eye(len(pairs)) * 1.0
    for i, j in enumerate(pairs):
        embeds[i, j] += 0.5
    return embeds


def test_hard_object_comes_from_the_nearest_image_and_is_absent():
    otf = OnTheFlyNegation(seed=0)
    out = otf(CAPTIONS, _embeds_with_nearest([2, 3, 0, 1]), OBJECTS)
    for i, j in enumerate([2, 3, 0, 1]):
        obj = out["hard_objects"][i]
        assert obj in OBJECTS[j] and obj not in OBJECTS[i]
        assert mentions(out["hybrid"][i], obj)
        assert count_negations(out["hybrid"][i]) == count_negations(CAPTIONS[i]) + 1
    for i, text in enumerate(out["full"]):
        assert count_negations(text) == 1 and CAPTIONS[i].rstrip(".") not in text.lower()


def test_caption_nouns_without_objects():
    otf = OnTheFlyNegation(seed=0)
    out = otf(CAPTIONS, _embeds_with_nearest([1, 0, 3, 2]))
    assert out["hard_objects"][0] in {"dog", "couch"} and out["hard_objects"][2] in {"cat", "bed"}
    assert caption_nouns("A small red car parked next to a fire hydrant.", ("fire hydrant",)) == ["fire hydrant", "car"]


def test_deterministic_under_seed_and_counts_missing_objects():
    embeds = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    runs = [OnTheFlyNegation(seed=7)(CAPTIONS, embeds, OBJECTS) for _ in range(2)]
    assert runs[0] == runs[1]
    assert OnTheFlyNegation(seed=8)(CAPTIONS, embeds, OBJECTS) != runs[0]
    otf = OnTheFlyNegation(seed=0)
    out = otf(["a dog.", "a dog."], None, [["dog"], ["dog"]])
    assert out["hard_objects"] == [None, None] and out["hybrid"] == ["a dog.", "a dog."]
    assert otf.stats["no_hard_object"] == 2 and otf.stats["no_full_negation"] == 2


def test_bad_batches():
    with pytest.raises(ValueError, match="at least 2 captions"):
        OnTheFlyNegation()(["a dog"])
    with pytest.raises(ValueError, match="3 object lists for 4 captions"):
        OnTheFlyNegation()(CAPTIONS, None, OBJECTS[:3])
