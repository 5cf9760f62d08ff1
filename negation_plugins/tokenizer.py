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
