"""The one negation lexicon and the views derived from it (caption counting, prompt routing)."""

import pytest

from negation_plugins.lexicon import CUES as LEXICON
from negation_plugins.lexicon import (
    NEGATION_WORDS,
    SPAN_CUES,
    SPAN_MULTI_WORD_CUES,
    Cue,
    count_negations,
    cue_phrases,
    is_negated,
    split_negations,
)

# The word lists the lexicon replaced (data/language, integrations/prompting): the derived views must equal them.
COUNTED_BEFORE = {
    "no", "not", "without", "nothing", "none", "never", "neither", "nor", "absent", "lacking", "lacks", "lack",
    "free", "nobody", "nowhere", "isn't", "aren't", "wasn't", "weren't", "doesn't", "don't", "didn't", "can't",
    "cannot", "won't", "hasn't", "haven't",
}  # fmt: skip
ROUTED_BEFORE = {"without", "no", "not", "never", "nor", "minus", "sans", "except", "lacking"}
ADDED_SINCE = {"zero"}  # "zero dogs": the train phrasing family "zero"
# the train families added for breadth (issue 15): "gone", "sans", "nary a", "excluding", ...
ADDED_FOR_BREADTH = {"gone", "vanished", "absence", "bereft", "sans", "minus", "nary", "excluding", "excludes", "avoids",
                     "avoiding"}  # fmt: skip


def test_views_equal_the_lists_they_replaced():
    assert NEGATION_WORDS == COUNTED_BEFORE | ADDED_SINCE | ADDED_FOR_BREADTH
    assert set(SPAN_CUES) == ROUTED_BEFORE | ADDED_SINCE | {"absence", "bereft", "nary", "excluding"}
    assert set(SPAN_MULTI_WORD_CUES) == {("with", "no"), ("free", "of"), ("devoid", "of"), ("bereft", "of"),
                                         ("absence", "of"), ("in", "the", "absence", "of"), ("with", "nary")}  # fmt: skip


@pytest.mark.parametrize(
    "text, count",
    [
        ("A street with no cars.", 1),
        ("A dog without a leash, not on the sofa", 2),
        ("The cat isn't on the mat and won't move", 2),
        ("Shouldn't be there", 1),  # any n't contraction, listed or not
        ("everything except the dog", 0),  # an exclusion routes in prompts but does not negate a caption
        ("A piano on a stage; a nonsense notebook", 0),  # cues are whole words
    ],
)
def test_counting(text, count):
    assert count_negations(text) == count
    assert is_negated(text) == bool(count)


def test_every_cue_has_a_known_kind_and_scope():
    assert cue_phrases() == tuple(LEXICON)
    assert set(cue_phrases(negates="itself")) == {"nothing", "none", "nobody", "nowhere", "neither"}
    with pytest.raises(ValueError, match="cue kind 'interjection'.*kind must be one of"):
        Cue("interjection", "following")


def test_routing_follows_the_table():
    """A cue that negates the phrase after it routes; one that negates itself or its clause does not."""
    assert split_negations("a beach devoid of umbrellas") == ("a beach", ["umbrellas"])
    assert split_negations("a street in the absence of cars") == ("a street", ["cars"])
    assert split_negations("a room with nary a chair") == ("a room", ["a chair"])
    # cutting "except cars" joins "absence" and "of" into a cue: the rest is split again (found by test_idempotent)
    assert split_negations("absence except cars of trees") == ("", ["cars", "trees"])
    assert split_negations("nothing on the table") == ("nothing on the table", [])
    assert split_negations("the street isn't empty") == ("the street isn't empty", [])
