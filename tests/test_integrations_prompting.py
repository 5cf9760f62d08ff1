"""Negation-aware prompting: the phrase splitter (examples + hypothesis properties) and its pipeline use."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from integrations.prompting import route_negations
from negation_plugins.lexicon import SPAN_CUES, split_negations

VOCAB = sorted(
    set(SPAN_CUES)
    | {
        "with",
        "free",
        "of",
        "a",
        "an",
        "the",
        "and",
        "or",
        "in",
        "on",
        "dog",
        "cars",
        "street",
        "red",
        "bus",
        "people",
        "trees",
        "not",
        "No",
        "WITHOUT",
        ",",
        ".",
        ";",
        "!",
        "&",
        "-",
        "piano",
        "nothing",
    }
)
word_prompts = st.lists(st.sampled_from(VOCAB), max_size=14).map(" ".join)
any_prompts = st.one_of(word_prompts, st.text(max_size=60))


@pytest.mark.parametrize(
    "prompt, rest, negated",
    [
        ("a street without cars", "a street", ["cars"]),
        ("a street without cars, at night", "a street, at night", ["cars"]),
        ("no cars on the street", "on the street", ["cars"]),
        ("not a dog", "", ["dog"]),
        ("a dog, not a cat", "a dog", ["cat"]),
        ("a street without cars and trucks", "a street", ["cars and trucks"]),
        ("a street without cars and a red bus", "a street and a red bus", ["cars"]),
        ("a kitchen with no people in it", "a kitchen in it", ["people"]),
        ("a beach free of umbrellas", "a beach", ["umbrellas"]),
        ("No people; only a red bicycle", "only a red bicycle", ["people"]),
        ("a piano on a stage", "a piano on a stage", []),  # "no" inside a word is not a cue
        ("without", "without", []),  # nothing to negate
    ],
)
def test_examples(prompt, rest, negated):
    assert split_negations(prompt) == (rest, negated)


def test_route_appends_to_existing_negative_prompt():
    routed = route_negations("a street without cars and no people", negative_prompt="blurry")
    assert routed.negated == ["cars", "people"]
    assert routed.pipeline_kwargs() == {"prompt": "a street", "negative_prompt": "blurry, cars, people"}
    untouched = route_negations("a red bus", negative_prompt="blurry")
    assert untouched.pipeline_kwargs() == {"prompt": "a red bus", "negative_prompt": "blurry"}


@settings(max_examples=300, deadline=None)
@given(any_prompts)
def test_never_crashes_and_phrases_come_from_the_prompt(prompt):
    rest, negated = split_negations(prompt)
    assert isinstance(rest, str)
    for phrase in negated:
        assert phrase and phrase in prompt


@settings(max_examples=300, deadline=None)
@given(any_prompts)
def test_idempotent(prompt):
    rest, _ = split_negations(prompt)
    assert split_negations(rest) == (rest, [])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "red", "dog", "on", "the", "street", ",", "and", "trees"]), max_size=12).map(
        " ".join
    )
)
def test_prompts_without_cues_are_unchanged(prompt):
    assert split_negations(prompt) == (prompt, [])
    assert route_negations(prompt).negative_prompt is None


@settings(max_examples=200, deadline=None)
@given(word_prompts)
def test_rest_keeps_no_negated_phrase_after_its_cue(prompt):
    rest, _negated = split_negations(prompt)
    rest_words = rest.lower().split()
    for cue in ("without", "no", "not"):
        for i, word in enumerate(rest_words[:-1]):
            if word == cue:
                # whatever follows a cue left in the prompt is not a negatable word
                follower = rest_words[i + 1]
                assert (
                    follower in SPAN_CUES
                    or not follower[0].isalnum()
                    or follower in {"and", "or", "in", "on", "with", "of", "a", "an", "the"}
                    or (cue == "not" and follower in {"a", "an", "the"})
                )
