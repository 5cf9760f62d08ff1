"""Caches that heal: a damaged evaluation embedding-cache file or verdict database is logged with its path, moved
aside (never used) and its entries computed again; the run goes on. (The feature store's parts:
tests/test_trainer_features.py.)"""

from __future__ import annotations

import sqlite3

import pytest
import torch

from negation_plugins.benchmarks.common import TextEmbeddingCache
from negation_plugins.data.io import DataError
from negation_plugins.data.verifiers import VerdictCache


def saved_cache(folder) -> tuple[TextEmbeddingCache, dict]:
    cache = TextEmbeddingCache(folder)
    rows = {f"caption {i}": torch.randn(16) for i in range(50)}
    cache.put("model", rows)
    cache.save()
    return cache, rows


def damage_truncate(path):
    path.write_bytes(path.read_bytes()[:-64])


def damage_flip(path):
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # same length, one changed value: only the checksum can tell
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [damage_truncate, damage_flip])
def test_damaged_embedding_cache_file_is_moved_aside_and_recomputed(tmp_path, caplog, damage):
    _, rows = saved_cache(tmp_path)
    (file,) = tmp_path.glob("text-*.safetensors")
    assert TextEmbeddingCache(tmp_path).get("model", list(rows)).keys() == rows.keys()  # intact: all hits
    damage(file)
    with caplog.at_level("WARNING"):
        cache = TextEmbeddingCache(tmp_path)
        assert cache.get("model", list(rows)) == {}  # nothing from the damaged file is used
    assert str(file) in caplog.text and "moved aside" in caplog.text
    assert len(list(tmp_path.glob(f"{file.name}.corrupt-*"))) == 1 and not file.exists()
    cache.put("model", rows)  # what an Encoder does after the misses
    cache.save()
    got = TextEmbeddingCache(tmp_path).get("model", list(rows))
    assert all(torch.equal(got[k], rows[k]) for k in rows)


def test_eval_with_a_damaged_cache_succeeds_and_rewrites_it(tmp_path, caplog):
    """Through an Encoder, as `negclip eval --cache-dir` uses it: the damaged file's texts are encoded again."""
    from negation_plugins import load_clip
    from negation_plugins.benchmarks.common import Encoder
    from negation_plugins.testing import tiny_model_dir

    clip = load_clip(tiny_model_dir(tmp_path / "model"))
    texts = ["a dog", "no dog", "a cat without a hat"]
    first = Encoder(clip, TextEmbeddingCache(tmp_path / "cache"), progress=False)
    expected = first.texts(texts)
    first.cache.save()
    (file,) = (tmp_path / "cache").glob("text-*.safetensors")
    damage_flip(file)
    cache = TextEmbeddingCache(tmp_path / "cache")
    with caplog.at_level("WARNING"):
        again = Encoder(clip, cache, progress=False).texts(texts)
    assert torch.allclose(again, expected) and cache.stats() == {"hits": 0, "misses": len(texts)}
    cache.save()
    assert TextEmbeddingCache(tmp_path / "cache").get(next(iter(cache._models)), texts).keys() == set(texts)


def verdicts(path, n=300) -> VerdictCache:
    cache = VerdictCache(path)
    cache.put("vqa", [(f"/images/{i}.png", "dog") for i in range(n)], [i % 2 == 0 for i in range(n)])
    return cache


def test_damaged_verdict_database_is_moved_aside_and_asked_again(tmp_path, caplog):
    path = tmp_path / "verdicts.sqlite"
    verdicts(path).db.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 8192  # pages beyond the first: damage one of them, as a bad copy or a crashed disk does
    data[8192 : 8192 + 16] = b"\xa5" * 16  # page 3's header: PRAGMA quick_check reports it
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        cache = VerdictCache(path)
    assert "verdicts.sqlite" in caplog.text and "moved aside" in caplog.text
    assert len(list(tmp_path.glob("verdicts.sqlite.corrupt-*"))) == 1
    assert cache.get("vqa", [("/images/1.png", "dog")]) == [None]  # asked again, not read from damaged pages
    cache.put("vqa", [("/images/1.png", "dog")], [False])
    assert VerdictCache(path).get("vqa", [("/images/1.png", "dog")]) == [False]


def test_truncated_verdict_database_is_moved_aside(tmp_path):
    path = tmp_path / "verdicts.sqlite"
    verdicts(path).db.close()
    path.write_bytes(path.read_bytes()[:5000])
    cache = VerdictCache(path)
    assert cache.get("vqa", [("/images/0.png", "dog")]) == [None]
    assert len(list(tmp_path.glob("verdicts.sqlite.corrupt-*"))) == 1


def test_a_locked_verdict_database_is_not_damage(tmp_path, monkeypatch):
    """Busy (another process holds a write lock past the timeout) is said in one line, and the file is left alone."""
    import negation_plugins.data.verifiers as verifiers

    path = tmp_path / "verdicts.sqlite"
    verdicts(path, 3).db.close()
    connect = sqlite3.connect
    monkeypatch.setattr(verifiers.sqlite3, "connect", lambda *a, **k: connect(*a, **{**k, "timeout": 0.1}))
    holder = connect(path)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(DataError, match="cannot use it as the verdict cache .*locked"):
            VerdictCache(path)
    finally:
        holder.rollback()
        holder.close()
    assert not list(tmp_path.glob("*.corrupt-*"))
