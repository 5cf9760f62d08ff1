"""The fast CLIP tokenizer gives exactly open_clip's ids, on a large varied corpus and on hypothesis' texts."""

from __future__ import annotations

import random

import open_clip
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from negation_plugins import tokenizer as tokenizer_module
from negation_plugins.tokenizer import FastClipTokenizer
from tests.test_tokenizer import SENTENCES

PIECES = [
    "a", "photo", "of", "dog", "cat", "no", "not", "without", "isn't", "there's", "we'll", "I'M", "THEY'VE", "DON'T",
    "café", "naïve", "Ελληνικά", "ΟΔΟΣ", "русский", "東京", "猫", "한국어", "العربية", "עברית", "हिन्दी", "ไทย",
    "🙂", "🐶🐱", "👩‍👩‍👧", "🇫🇷", "❤️", "&amp;", "&lt;b&gt;", "&#39;", "&quot;hi&quot;", "&nbsp;", "&amp;amp;", "&bogus;",
    "cafÃ©", "â€œquotedâ€\x9d", "ﬁsh", "ﬂour", "ǅ", "İstanbul", "'ſ", "Kelvin", "ß", "ẞ", "e\u0301", "\u00a0",
    "\u3000", "\u2028", "\u200b", "\x85", "\x1c", "\x00", "\x07", "\x1b[31m", "\t", "\n\n", "\r\n", "   ",
    "<start_of_text>", "<END_OF_TEXT>", "<<start_of_text>", "<|endoftext|>", "...", "--", "!!!", "$12.50", "3,000",
    "1/2", "½", "²", "①", "٣", "e-mail@example.com", "#nofilter", "(approx.)", "«guillemets»", "“curly”", "‘single’",
    "ＦＵＬＬＷＩＤＴＨ", "\ud83d\ude00".encode("utf-16", "surrogatepass").decode("utf-16"), "ﷺ", "\ufeff", "x" * 300,
]  # fmt: skip


def corpus(n: int = 3000, seed: int = 0) -> list[str]:
    """Captions mixing the pieces above with spacing of every kind; some far over 77 tokens."""
    rng = random.Random(seed)
    spaces = [" ", "  ", "\t", "\n", "", " \u00a0", ", ", ". "]
    texts = list(SENTENCES)
    for _ in range(n):
        words = rng.choices(PIECES, k=rng.choice([1, 3, 8, 20, 60, 120]))
        texts.append("".join(w + rng.choice(spaces) for w in words))
    return texts


@pytest.fixture(scope="module")
def tokenizers():
    return FastClipTokenizer(), open_clip.get_tokenizer("ViT-B-32")


def test_same_ids_as_open_clip_on_a_varied_corpus(tokenizers):
    fast, reference = tokenizers
    texts = corpus()
    assert any(len(reference.encode(t)) > 75 for t in texts)  # truncation is exercised
    expected, got = reference(texts), fast(texts)
    differing = [t for t, a, b in zip(texts, got, expected) if not torch.equal(a, b)]
    assert not differing, f"{len(differing)} texts differ, e.g. {differing[:3]!r}"
    assert got.dtype == torch.long and got.shape == (len(texts), 77)


def test_other_context_lengths(tokenizers):
    fast, reference = tokenizers
    texts = corpus(200, seed=1)
    assert torch.equal(fast(texts, context_length=16), reference(texts, context_length=16))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(max_size=60), st.sampled_from(PIECES)), min_size=1, max_size=8))
def test_same_ids_as_open_clip_on_any_text(tokenizers, parts):
    fast, reference = tokenizers
    text = " ".join(parts)
    assert fast(text).tolist() == reference(text).tolist(), repr(text)


def test_the_word_cache_stays_bounded(monkeypatch, tokenizers):
    _, reference = tokenizers
    monkeypatch.setattr(tokenizer_module, "WORD_CACHE_SIZE", 10)
    fast = FastClipTokenizer()
    texts = [f"word{i} another{i} caption {i}" for i in range(50)]
    assert torch.equal(fast(texts), reference(texts))
    assert len(fast.cache) <= 10
