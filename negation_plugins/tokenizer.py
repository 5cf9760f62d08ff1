"""A real transformers ``CLIPTokenizer`` without the network.

Hub tokenizers are unavailable offline (and ``from_pretrained`` in offline mode can silently return a useless
tokenizer), but the CLIP BPE vocabulary ships inside the open_clip wheel. Rebuilding the vocabulary exactly
as open_clip's ``SimpleTokenizer`` does gives the same 49,408 ids.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 49408
# open_clip keeps merges[1 : 49152 - 256 - 2 + 1]: the vocab is 256 bytes x 2 (with/without </w>) + merges + 2.
NUM_MERGES = 49152 - 256 - 2


def bpe_path() -> Path:
    import open_clip

    return Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """The CLIP vocabulary (token -> id) and BPE merges, built from open_clip's bundled file."""
    from open_clip.tokenizer import bytes_to_unicode

    with gzip.open(bpe_path()) as bpe_file:
        lines = bpe_file.read().decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : NUM_MERGES + 1])
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"{bpe_path()}: built {len(vocab)} CLIP tokens, expected {VOCAB_SIZE}")
    return vocab, merges


def clip_tokenizer(context_length: int = 77):
    """A ``transformers.CLIPTokenizer`` with open_clip's ids; ``model_max_length`` = ``context_length``.

    Call it with ``padding="max_length", truncation=True`` to get the same ids as open_clip up to the first
    end-of-text token (open_clip pads with 0, transformers with the end-of-text id; CLIP's causal mask
    makes the pooled output and every token up to the end-of-text token identical either way).
    Note: open_clip additionally runs ``ftfy`` and HTML-unescapes text; transformers does neither.
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    tokenizer = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=context_length)
    if len(tokenizer) != VOCAB_SIZE or tokenizer.eos_token_id != VOCAB_SIZE - 1:
        raise RuntimeError(f"built a broken CLIP tokenizer ({len(tokenizer)} tokens, eos id {tokenizer.eos_token_id})")
    return tokenizer


# Texts of these characters and without "&" pass through ftfy and html.unescape unchanged, so open_clip's cleaning
# of them is whitespace folding and lower-casing only; other texts get open_clip's own cleaning function.
_PLAIN = frozenset("\t\n\r" + "".join(map(chr, range(0x20, 0x7F)))) - {"&"}
WORD_CACHE_SIZE = 200_000  # words -> ids kept (cleared when full), so memory stays bounded on any corpus


class FastClipTokenizer:
    """open_clip's CLIP tokenizer, several times faster, with the same ids (tests/test_tokenizer_fast.py).

    Each step is open_clip's: its cleaning (ftfy, HTML unescaping, whitespace, lower case; for plain ASCII text
    without ``&``, which ftfy and unescaping leave as is, only whitespace and case), its split pattern (special
    tokens included) and its BPE merges, run in Rust by Hugging Face ``tokenizers`` for words not seen lately.
    The speed comes from skipping ftfy on plain text and from a bounded word -> ids cache. (``tokenizers``' own
    regex pre-tokenizer was slower than Python's ``regex`` here, so splitting stays in Python.)
    Called like open_clip's: texts -> LongTensor (N, context_length), 0-padded, end-of-text id last.
    """

    def __init__(self, context_length: int = 77):
        from open_clip.tokenizer import SimpleTokenizer, _clean_lower, bytes_to_unicode
        from tokenizers import models

        vocab, merges = clip_vocab_and_merges()
        self.bpe = models.BPE(vocab=dict(vocab), merges=list(merges), end_of_word_suffix="</w>")
        reference = SimpleTokenizer(context_length=context_length)
        self.pattern, self.clean = reference.pat, _clean_lower
        self.sot, self.eot = reference.sot_token_id, reference.eot_token_id
        self.specials = {"<start_of_text>": [self.sot], "<end_of_text>": [self.eot]}
        self.byte_encoder = bytes_to_unicode()
        self.context_length = context_length
        self.cache: dict[str, list[int]] = dict(self.specials)

    def cleaned(self, text: str) -> str:
        if _PLAIN.issuperset(text):
            return " ".join(text.split()).lower()
        return self.clean(text)

    def word_ids(self, word: str) -> list[int]:
        ids = self.cache.get(word)
        if ids is None:
            if len(self.cache) >= WORD_CACHE_SIZE:
                self.cache = dict(self.specials)
            symbols = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            ids = self.cache[word] = [token.id for token in self.bpe.tokenize(symbols)]
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens (open_clip's ``SimpleTokenizer.encode``)."""
        ids: list[int] = []
        for word in self.pattern.findall(self.cleaned(text)):
            ids += self.word_ids(word)
        return ids

    def __call__(self, texts, context_length: int | None = None):
        import numpy as np
        import torch

        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        out = np.zeros((len(texts), length), dtype=np.int64)
        out[:, 0] = self.sot
        for i, text in enumerate(texts):
            ids = self.encode(text)[: length - 2]
            out[i, 1 : len(ids) + 1] = ids
            out[i, len(ids) + 1] = self.eot
        return torch.from_numpy(out)
