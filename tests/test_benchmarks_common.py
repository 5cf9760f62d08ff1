"""Shared benchmark machinery (ranks, image resolution, encoder, text-embedding cache) and the tiny real model
every benchmark test scores with."""

from __future__ import annotations

import copy
import functools
import random

import open_clip
import pytest
import torch
from PIL import Image

from negation_plugins.benchmarks.common import (
    BenchmarkDataError,
    Encoder,
    ImageEmbeddingCache,
    RowProblems,
    TextEmbeddingCache,
    model_fingerprint,
    pessimistic_rank,
    resolve_image,
    retrieval_recalls,
    vision_fingerprint,
)
from negation_plugins.factory import ClipBundle


@functools.cache
def _tiny_model(seed: int):
    torch.manual_seed(seed)
    return open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg={"layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "image_size": 32},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        quick_gelu=True,
    ).eval()


def tiny_clip(seed: int = 0) -> ClipBundle:
    """A real open_clip CLIP with random weights (32-wide, one layer per tower) and real preprocessing."""
    return ClipBundle(
        model=_tiny_model(seed),
        tokenizer=open_clip.get_tokenizer("ViT-B-32"),
        preprocess=open_clip.image_transform(32, is_train=False),
        spec=f"tiny-{seed}",
    )


def write_images(folder, names, seed=0, size=(40, 30)):
    """Real PNG/JPEG files with random blocks of colour, so every image embeds differently."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
        for _ in range(4):
            x, y = rng.randrange(size[0] - 8), rng.randrange(size[1] - 8)
            image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 8, y + 8))
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / name)
    return folder


def hand_image_embeddings(clip, paths):
    """One image at a time, straight through the bundle: the reference the scorers are checked against."""
    out = []
    for path in paths:
        with Image.open(path) as img:
            out.append(clip.encode_image(clip.preprocess(img.convert("RGB"))[None])[0])
    return out


def dot(a, b):
    return float(sum(x * y for x, y in zip(a.tolist(), b.tolist())))


def test_pessimistic_rank_counts_ties_against_the_model():
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.2, 0.2], [0.1, 0.7, 0.8]])
    positive = torch.eye(3, dtype=torch.bool)
    assert pessimistic_rank(scores, positive).tolist() == [0, 2, 0]
    two_positives = torch.tensor([[True, False, True]] * 3)
    assert pessimistic_rank(scores, two_positives).tolist() == [0, 1, 0]


def test_retrieval_recalls_both_ways_with_ties_against_the_model():
    """Images 0 and 2 embed alike, so captions 0 and 2 tie between them: each such tie is a miss at R@1."""
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    owners = [0, 1, 2, 1]
    got = retrieval_recalls(images, texts, owners, ks=(1, 2, 5))
    # text->image: captions 1 and 3 rank their image first, captions 0 and 2 tie with the twin image (rank 1)
    assert (got["t2i_R@1"], got["t2i_R@2"], got["t2i_R@5"]) == (0.5, 1.0, 1.0)
    # image->text: image 1's own caption wins; images 0 and 2 tie with the twin's caption
    assert got["i2t_R@1"] == pytest.approx(1 / 3) and got["i2t_R@2"] == 1.0 and got["i2t_R@5"] == 1.0
    assert list(retrieval_recalls(images, texts, owners, ks=(1,), directions=("t2i",))) == ["t2i_R@1"]

    constant = retrieval_recalls(torch.zeros(3, 2), torch.zeros(4, 2), owners, ks=(1, 5))
    assert constant == {"t2i_R@1": 0.0, "t2i_R@5": 1.0, "i2t_R@1": 0.0, "i2t_R@5": 1.0}


def test_retrieval_recalls_in_blocks_equal_the_full_score_matrix():
    generator = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(37, 8, generator=generator), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(101, 8, generator=generator), dim=-1)
    owners = torch.randint(37, (101,), generator=generator)
    full = retrieval_recalls(images, texts, owners, ks=(1, 5, 10), block_elements=10**9)
    for block in (1, 37, 500, 101 * 37 - 1):  # one query at a time, ..., one query short of everything
        assert retrieval_recalls(images, texts, owners, ks=(1, 5, 10), block_elements=block) == full
    scores = texts @ images.T
    positive = owners[:, None] == torch.arange(37)[None]
    t2i, i2t = pessimistic_rank(scores, positive), pessimistic_rank(scores.T, positive.T)
    for k in (1, 5, 10):
        assert full[f"t2i_R@{k}"] == float((t2i < k).float().mean())
        assert full[f"i2t_R@{k}"] == float((i2t < k).float().mean())


def test_resolve_image_tries_root_then_basename_and_explains(tmp_path):
    write_images(tmp_path / "imgs", ["a.png"])
    found, _ = resolve_image("/authors/machine/a.png", tmp_path / "imgs")
    assert found == tmp_path / "imgs" / "a.png"
    missing, why = resolve_image("b.png", tmp_path / "imgs")
    assert missing is None and "b.png" in why and "tried" in why
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image")
    broken, why = resolve_image("broken.png", tmp_path / "imgs")
    assert broken is None and "unreadable" in why


def test_row_problems_raise_or_count():
    with pytest.raises(BenchmarkDataError, match=r"data.csv: row 3: bad caption.*--skip-bad"):
        RowProblems("data.csv").bad(3, "bad caption")
    problems = RowProblems("data.csv", skip_bad=True)
    problems.bad(3, "bad caption")
    assert problems.summary() == {"n_skipped": 1, "skipped": ["data.csv: row 3: bad caption"]}


def test_encoder_matches_bundle_and_cache_hits(tmp_path):
    clip = tiny_clip()
    texts = ["a dog", "no dog", "a dog", "a cat"]
    direct = clip.encode_text(texts)
    cache = TextEmbeddingCache(tmp_path / "cache")
    first = Encoder(clip, cache=cache, batch_size=2, progress=False).texts(texts)
    assert torch.allclose(first, direct, atol=1e-5)
    assert cache.stats() == {"hits": 0, "misses": 3}  # duplicates encoded once
    cache.save()

    reloaded = TextEmbeddingCache(tmp_path / "cache")
    again = Encoder(clip, cache=reloaded, progress=False).texts(texts)
    assert torch.equal(again, first) and reloaded.stats() == {"hits": 3, "misses": 0}
    other = Encoder(tiny_clip(seed=1), cache=reloaded, progress=False).texts(["a dog"])  # other weights: a miss
    assert reloaded.stats()["misses"] == 1 and not torch.allclose(other[0], first[0])


def test_fingerprint_changes_with_any_weight():
    clip = tiny_clip()
    before = model_fingerprint(clip)
    model = open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg={"layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "image_size": 32},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        quick_gelu=True,
    )
    model.load_state_dict(clip.model.state_dict())
    copy = ClipBundle(model=model, tokenizer=clip.tokenizer, preprocess=clip.preprocess, spec="copy")
    assert model_fingerprint(copy) == before
    with torch.no_grad():
        model.text_projection[0, 0] += 1e-3
    assert model_fingerprint(copy) != before


def test_encoder_image_files_match_one_by_one(tmp_path):
    clip = tiny_clip()
    paths = [p for p in sorted(write_images(tmp_path, [f"{i}.png" for i in range(5)]).iterdir())]
    for workers in (0, 2):  # decoded in this process, then in two DataLoader workers (3 batches of 2)
        batched = Encoder(clip, batch_size=2, progress=False, workers=workers).image_files(paths + paths[:1])
        for got, want in zip(batched, hand_image_embeddings(clip, paths + paths[:1])):
            assert torch.allclose(got, want, atol=1e-5)


def text_only_finetune(clip: ClipBundle, seed: int = 5) -> ClipBundle:
    """A copy of ``clip`` whose text tower (only) has moved, as after text-encoder fine-tuning."""
    model = copy.deepcopy(clip.model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.transformer.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return ClipBundle(model=model, tokenizer=clip.tokenizer, preprocess=clip.preprocess, spec=f"{clip.spec}-ft")


def test_vision_fingerprint_ignores_the_text_tower_and_follows_vision_and_preprocessing():
    clip = tiny_clip()
    tuned = text_only_finetune(clip)
    assert model_fingerprint(tuned) != model_fingerprint(clip)
    assert vision_fingerprint(tuned) == vision_fingerprint(clip)
    resized = ClipBundle(tuned.model, tuned.tokenizer, open_clip.image_transform(48, is_train=False), "resized")
    assert vision_fingerprint(resized) != vision_fingerprint(clip)
    with torch.no_grad():
        tuned.model.visual.proj[0, 0] += 1e-3
    assert vision_fingerprint(tuned) != vision_fingerprint(clip)


def test_image_cache_on_disk_serves_a_text_only_finetune(tmp_path):
    clip = tiny_clip()
    paths = sorted(write_images(tmp_path / "imgs", [f"{i}.png" for i in range(3)]).iterdir())
    cache = ImageEmbeddingCache(tmp_path / "cache")
    first = Encoder(clip, image_cache=cache, progress=False).image_files(paths + paths[:1])
    assert cache.stats() == {"hits": 0, "misses": 3}
    cache.save()
    assert [f.name.split("-")[0] for f in (tmp_path / "cache").iterdir()] == ["image"]

    reloaded = ImageEmbeddingCache(tmp_path / "cache")
    again = Encoder(text_only_finetune(clip), image_cache=reloaded, progress=False).image_files(paths)
    assert reloaded.stats() == {"hits": 3, "misses": 0} and torch.equal(again, first[:3])
    write_images(tmp_path / "imgs", ["1.png"], seed=9)  # a rewritten file is embedded afresh
    Encoder(clip, image_cache=reloaded, progress=False).image_files(paths)
    assert reloaded.stats() == {"hits": 5, "misses": 1}
    Encoder(tiny_clip(seed=1), image_cache=reloaded, progress=False).image_files(paths[:1])  # other vision tower
    assert reloaded.stats()["misses"] == 2


def test_bf16_autocast_is_close_to_fp32_and_cached_apart(tmp_path):
    clip = tiny_clip()
    paths = sorted(write_images(tmp_path / "imgs", ["a.png", "b.png"]).iterdir())
    cache, texts = ImageEmbeddingCache(), TextEmbeddingCache()
    fp32 = Encoder(clip, cache=texts, image_cache=cache, progress=False)
    bf16 = Encoder(clip, cache=texts, image_cache=cache, progress=False, dtype=torch.bfloat16)
    low, full = bf16.image_files(paths), fp32.image_files(paths)
    assert low.dtype == torch.float32 and not torch.equal(low, full) and torch.allclose(low, full, atol=0.05)
    assert cache.stats() == {"hits": 0, "misses": 4}  # the precision is part of the key
    assert torch.allclose(bf16.texts(["no dog"]), fp32.texts(["no dog"]), atol=0.05)
    assert texts.stats() == {"hits": 0, "misses": 2}


def test_an_undecodable_image_in_a_worker_fails_in_one_line(tmp_path):
    from negation_plugins.images import ImageDecodeError

    paths = sorted(write_images(tmp_path, ["a.png", "b.png"]).iterdir())
    paths[1].write_bytes(paths[1].read_bytes()[:60])  # a truncated PNG: the header reads, the pixels do not
    encoder = Encoder(tiny_clip(), batch_size=1, progress=False, workers=2)
    with pytest.raises(ImageDecodeError, match=r"b.png: not a readable image") as caught:
        encoder.image_files(paths)
    assert "\n" not in str(caught.value)
