"""Template negator: properties over arbitrary captions/objects, grammar details, the 77-token limit."""

import random
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from negation_plugins import plugins
from negation_plugins.data.io import CaptionItem
from negation_plugins.data.language import (
    mention_pattern,
    mentions,
    pluralize,
    replace_mention,
    with_article,
)
from negation_plugins.data.negators import (
    TRAIN_FORMS,
    fits_context,
    full,
    hybrid,
    presence,
)
from negation_plugins.data.vocabulary import COCO_CATEGORIES
from negation_plugins.lexicon import count_negations
from negation_plugins.phrasings import families, templates

WORDS = ["a", "the", "man", "red", "dog", "riding", "on", "and", "with", "couch", "two", "cats", "in", "field",
         "next", "to", "tree", "of", "photo", ",", "there", "is", "big", "horse", "no", "not"]  # fmt: skip
captions = st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(" ".join) | st.text(
    alphabet=string.ascii_letters + " ,.;'-", min_size=1, max_size=120
)
objects = st.sampled_from(COCO_CATEGORIES)


@settings(max_examples=150, deadline=None)
@given(captions, objects, st.integers(0, 2**32))
def test_hybrid_mentions_object_once_and_adds_exactly_one_negation(caption, obj, seed):
    text = hybrid(caption, obj, random.Random(seed))
    if mention_pattern(obj).search(caption) or not caption.strip(" ,.;!?"):
        return  # refused below
    assert text is not None
    assert len(mention_pattern(obj).findall(text)) == 1
    assert count_negations(text) == count_negations(caption) + 1
    assert fits_context(text)


@settings(max_examples=150, deadline=None)
@given(captions, objects, st.lists(objects, max_size=3), st.integers(0, 2**32))
def test_presence_never_affirms_the_negated_object(caption, obj, others, seed):
    text = presence(caption, obj, [obj, *others], random.Random(seed))
    assert text is not None and fits_context(text)
    assert len(mention_pattern(obj).findall(text)) == 1  # only the negated mention remains


@settings(max_examples=100, deadline=None)
@given(captions, st.integers(0, 2**32))
def test_full_never_double_negates(caption, seed):
    text = full(caption, random.Random(seed))
    if count_negations(caption) or not caption.strip(" ,.;!?"):
        assert text is None
    else:
        assert text is not None and count_negations(text) == 1 and fits_context(text)


def test_refusals_and_grammar():
    rng = random.Random(0)
    assert hybrid("a dog on a couch", "dog", rng) is None  # the object is there: no absence caption
    assert hybrid("two dogs on a couch", "dog", rng) is None
    assert full("there is no dog", rng) is None
    assert with_article("apple") == "an apple" and with_article("umbrella") == "an umbrella"
    assert with_article("unicorn") == "a unicorn" and with_article("hour glass") == "an hour glass"
    assert [pluralize(w) for w in ("bus", "person", "knife", "traffic light", "toothbrush", "sheep")] == [
        "buses", "people", "knives", "traffic lights", "toothbrushes", "sheep"]  # fmt: skip
    assert presence("a red circle, a blue star and a green square.", "star", [], rng).startswith(
        "A red circle and a green square"
    )
    assert "a man on a bench" in presence("A man with a dog on a bench", "dog", [], rng).lower()


def test_cue_forms_are_diverse_and_all_used():
    cues = {t.replace("{c}", "").strip(" ,;") for t in TRAIN_FORMS.hybrid}
    assert len(cues) >= 10
    seen = {hybrid("a man in a field.", "dog", random.Random(s)) for s in range(1000)}
    assert len(seen) == len(TRAIN_FORMS.hybrid)
    assert "A man in a field, without a dog." in seen and "No dog is visible, but a man in a field." in seen


def test_long_captions_are_fitted_to_77_tokens_keeping_the_cue():
    caption = " ".join(["a very long description of a crowded street market"] * 12)
    text = hybrid(caption, "umbrella", random.Random(0))
    assert fits_context(text) and not fits_context(caption)
    assert "umbrella" in text and count_negations(text) == 1


def test_registered_negator_rewrites_batches():
    negator = plugins.get_one("negators", "template")()
    items = [CaptionItem("a.png", "a dog on a couch.", objects=("dog", "couch")), CaptionItem("b.png", "a cat.")]
    out = negator.rewrite(items, ["cat", "cat"], "absence", random.Random(0))
    assert out[0] is not None and "cat" in out[0] and out[1] is None
    (present,) = negator.rewrite(items[:1], ["dog"], "presence", random.Random(0))
    assert len(mention_pattern("dog").findall(present)) == 1


@settings(max_examples=100, deadline=None)
@given(captions | st.text(max_size=200))
def test_fast_token_count_matches_open_clip(text):
    from negation_plugins.data.negators import _clip_tokenizer, clip_token_count

    assert clip_token_count(text) == len(_clip_tokenizer().encode(text))  # open_clip's own full encode


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(alphabet=string.ascii_letters + string.digits + " ,.;'-()&<>é", max_size=30), max_size=4))
def test_counting_by_parts_equals_counting_the_whole(parts):
    from negation_plugins.data.negators import fits_context, fits_parts

    for context_length in (5, 12, 32):
        assert fits_parts(parts, context_length) == fits_context("".join(parts), context_length)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300), objects, st.integers(0, 2**32))
def test_never_crashes_on_arbitrary_text(caption, obj, seed):
    rng = random.Random(seed)
    for text in (hybrid(caption, obj, rng), full(caption, rng), presence(caption, obj, ["dog", obj], rng)):
        assert text is None or (isinstance(text, str) and fits_context(text))


def test_contextual_template_prefers_objects_that_co_occur():
    negator = plugins.get_one("negators", "template")(mode="contextual")
    scenes = [("dog", "couch"), ("dog", "couch", "tv"), ("dog", "couch"), ("cat", "bed"), ("dog", "frisbee")]
    items = [CaptionItem(f"{i}.png", "a scene.", objects=tuple(sorted(s))) for i, s in enumerate(scenes)]
    vocabulary = ["dog", "couch", "tv", "cat", "bed", "frisbee", "kite", "car"]
    negator.prepare(items, vocabulary)
    query = CaptionItem("q.png", "a dog in a park.", objects=("dog",))
    for seed in range(5):
        (candidates,) = negator.propose([query], vocabulary, random.Random(seed))
        assert candidates[0] in {"couch", "tv", "frisbee"} and "dog" not in candidates and len(candidates) == 3
    with pytest.raises(ValueError, match="mode must be random or contextual"):
        plugins.get_one("negators", "template")(mode="clever")


def test_negation_only_and_partial_forms_balance_true_and_false_captions():
    """Bare negations appear in both kinds, and absence rewrites sometimes list fewer objects, so neither the cue
    alone nor the length of the affirmed list tells a true caption from a false one."""
    negator = plugins.get_one("negators", "template")()
    item = CaptionItem("a.png", "a red circle, a blue star and a square.", objects=("circle", "star", "square"))
    rng = random.Random(0)
    absence = negator.rewrite([item] * 400, ["cross"] * 400, "absence", rng)
    presence_out = negator.rewrite([item] * 400, ["star"] * 400, "presence", rng)
    bare = [t for t in absence if not any(mentions(t, o) for o in item.objects)]
    assert 60 < len(bare) < 140 and all(mentions(t, "cross") for t in bare)  # ~25 % negation only
    assert 40 < sum(not any(mentions(t, o) for o in ("circle", "square")) for t in presence_out) < 140
    listing_two = [t for t in absence if t not in bare and sum(mentions(t, o) for o in item.objects) == 2]
    listing_three = [t for t in absence if t not in bare and sum(mentions(t, o) for o in item.objects) == 3]
    assert len(listing_two) > 80 and len(listing_three) > 80  # about half of the hybrids leave one object out
    assert all(count_negations(t) == 1 for t in absence)
    with pytest.raises(ValueError, match="negation_only_share must be in"):
        plugins.get_one("negators", "template")(negation_only_share=1.5)


def test_template_negator_writes_only_the_families_it_is_given():
    negator = plugins.get_one("negators", "template")(families="without,zero")
    item = CaptionItem("a.png", "a red circle and a blue star.", objects=("circle", "star"))
    rng = random.Random(0)
    texts = negator.rewrite([item] * 200, ["cross"] * 200, "absence", rng)
    texts += negator.rewrite([item] * 200, ["star"] * 200, "presence", rng)
    assert all(re.search(r"\b(without|zero)\b", t, re.IGNORECASE) for t in texts), texts
    assert {"without", "zero"} == {w for t in texts for w in ("without", "zero") if w in t.lower()}
    for wrong, message in (("no,lacking", "'lacking' is not a train family"), ("nope", "'nope' is not a train")):
        with pytest.raises(ValueError, match=f"negator 'template': families: phrasing family {message}"):
            plugins.get_one("negators", "template")(families=wrong)


# Surface marks of the held-out phrasing families (written independently of their templates).
HELD_OUT_MARKS = re.compile(
    r"-free\b|\black|n't\b|without a single|resembling|empty of|\bthere (is|are) no\b|nowhere|devoid|missing|"
    r"fails to|omitting|neither",
    re.IGNORECASE,
)


def test_phrasing_families_train_and_held_out_are_disjoint_and_sound():
    train, held_out = families("train"), families("held-out")
    assert len(train) >= 10 and len(held_out) >= 10
    assert not set(templates("hybrid", "train")) & set(templates("hybrid", "held-out"))
    assert set(TRAIN_FORMS.hybrid) == set(templates("hybrid", "train"))
    for phrasing in train:  # what the negator writes: one counted cue, the object named once, no held-out mark
        for template in phrasing.hybrid + phrasing.only:
            text = template.format(c="a man on a bench", o="dog", a="a dog", p="dogs")
            assert count_negations(text) == 1 and mentions(text, "dog"), text
            assert not HELD_OUT_MARKS.search(text), text
    for phrasing in held_out:  # each held-out family is recognisably not a train phrasing
        for template in phrasing.hybrid + phrasing.only:
            assert HELD_OUT_MARKS.search(template.format(c="a", o="dog", a="a dog", p="dogs", a2="a cat")), template
    with pytest.raises(ValueError, match="split must be one of train, held-out"):
        families("test")


def test_negator_never_writes_a_held_out_phrasing():
    negator = plugins.get_one("negators", "template")()
    rng = random.Random(0)
    items = [
        CaptionItem("a.png", "a red circle, a blue star and a square.", objects=("circle", "star", "square")),
        CaptionItem("b.png", "A man riding a horse on the beach.", objects=("person", "horse")),
        CaptionItem("c.png", "two cats on a couch", objects=("cat", "couch")),
    ]
    texts = []
    for kind, obj in (("absence", "dog"), ("presence", None)):
        for item in items:
            targets = [obj or item.objects[0]] * 300
            texts += negator.rewrite([item] * 300, targets, kind, rng)
    assert all(t is not None for t in texts)
    assert not [t for t in texts if HELD_OUT_MARKS.search(t)]
    assert len({t for t in texts}) > 100  # breadth: many distinct surface forms


@pytest.mark.parametrize(
    ("caption", "noun", "replacement", "expected"),
    [
        ("a red cross and an arrow.", "arrow", "star", "a red cross and a star."),
        ("An arrow and a cross", "arrow", "star", "A star and a cross"),
        ("a cross and a star", "cross", "arrow", "an arrow and a star"),
        ("three crosses and a star", "cross", "arrow", "three arrows and a star"),
        ("a red cross", "circle", "arrow", None),
    ],
)
def test_replace_mention_keeps_number_and_fixes_the_article(caption, noun, replacement, expected):
    assert replace_mention(caption, noun, replacement) == expected
