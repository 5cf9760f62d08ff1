"""The offline transformers CLIPTokenizer gives open_clip's ids."""

import open_clip
import pytest

from negation_plugins.tokenizer import VOCAB_SIZE, clip_tokenizer

SENTENCES = [
    "a photo of a dog",
    "A dog with no cat.",
    "There is no cup on the table",
    "a woman not wearing a hat riding a horse in a field",
    "No bicycle is visible, but a man is walking his dog.",
    "There's no tree in the image",
    "the kitchen doesn't have a refrigerator",
    "It isn't a cat; it's a DOG!!!",
    "without any people, cars or bikes",
    "nothing that looks like a giraffe",
    "not a single umbrella -- just rain...",
    "3 zebras, 2 elephants & 0 lions",
    "price: $12.50 (approx.)",
    "e-mail me at someone@example.com #nofilter",
    "café naïve résumé façade",
    "東京の猫 は いない",
    "emoji 🙂🐶 no 🐱",
    "Ελληνικά και русский текст",
    "tabs\tand\nnewlines   collapse",
    "   leading and trailing spaces   ",
    "UPPER lower MiXeD",
    "'s 't 're 've 'm 'll 'd contractions: we'll they've I'm",
    "",
    "no " * 100 + "end",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


def test_vocabulary_is_complete(tokenizer):
    assert len(tokenizer) == VOCAB_SIZE
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (49406, 49407)
    assert tokenizer.model_max_length == 77


@pytest.mark.parametrize("context_length", [77, 16])
def test_ids_equal_open_clip(tokenizer, context_length):
    reference = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)(SENTENCES)
    ours = (tokenizer if context_length == 77 else clip_tokenizer(context_length))(
        SENTENCES, padding="max_length", truncation=True, max_length=context_length
    )["input_ids"]
    for sentence, expected, got in zip(SENTENCES, reference.tolist(), ours):
        assert len(got) == context_length
        end = expected.index(49407) + 1  # open_clip pads with 0 after the end token, transformers with 49407
        assert got[:end] == expected[:end], sentence
        assert all(t == 49407 for t in got[end:])
    truncated = ours[SENTENCES.index("no " * 100 + "end")]
    assert truncated[0] == 49406 and truncated[-1] == 49407 and 49407 not in truncated[1:-1]


def test_saved_tokenizer_reloads_offline(tokenizer, tmp_path):
    from transformers import CLIPTokenizer

    tokenizer.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert len(again) == VOCAB_SIZE
    assert again(SENTENCES[:5])["input_ids"] == tokenizer(SENTENCES[:5])["input_ids"]
