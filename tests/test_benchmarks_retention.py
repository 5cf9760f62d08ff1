"""Retention checks (zero-shot image-folder classification, COCO-style retrieval), the negation probe, and the
same scorer on every backend, each against a direct hand computation with a tiny real CLIP."""

from __future__ import annotations

import json

import pytest
import torch

from negation_plugins import load_clip, plugins
from negation_plugins.benchmarks.common import BenchmarkDataError, Encoder, TextEmbeddingCache
from negation_plugins.benchmarks.probe import negator_pairs
from negation_plugins.benchmarks.retention import parse_templates
from tests.test_benchmarks_common import (
    dot,
    hand_image_embeddings,
    tiny_clip,
    write_images,
)

CLASSES = ["dog", "cat", "traffic_light", "boat", "kite", "pizza"]


def bench(name):
    return plugins.get_one("benchmarks", name)


def write_image_folder(root):
    for c, name in enumerate(CLASSES):
        write_images(root / name, [f"{name}_{i}.png" for i in range(2)], seed=c)
    return root


def test_zeroshot_classification_matches_hand_topk(tmp_path):
    root = write_image_folder(tmp_path / "imagenet-mini")
    clip = tiny_clip()
    templates = ["a photo of a {}.", "a drawing of the {}."]
    got = bench("zeroshot-classification").run(clip, root=root, templates="|".join(templates), progress=False)

    classifier = []
    for name in sorted(CLASSES):
        emb = clip.encode_text([t.format(name.replace("_", " ")) for t in templates]).mean(0)
        classifier.append(emb / emb.norm())
    top1 = top5 = 0
    for label, name in enumerate(sorted(CLASSES)):
        for image in hand_image_embeddings(clip, sorted((root / name).iterdir())):
            scores = [dot(image, w) for w in classifier]
            rank = sum(1 for j, s in enumerate(scores) if j != label and s >= scores[label])
            top1 += rank < 1
            top5 += rank < 5
    assert got["n_images"] == 12 and got["n_classes"] == 6 and got["n_templates"] == 2
    assert got["top1"] == pytest.approx(top1 / 12) and got["top5"] == pytest.approx(top5 / 12)


def prompts_seen(clip, **options):
    """Run zero-shot classification with a text cache; return (metrics, a lookup of which prompts were embedded)."""
    cache = TextEmbeddingCache()
    encoder = Encoder(clip, cache=cache, progress=False)
    got = bench("zeroshot-classification").run(clip, encoder=encoder, progress=False, **options)
    return got, lambda prompt: bool(cache.get(encoder.model_key, [prompt]))


def test_zeroshot_imagenet_wnid_folders_get_class_names_and_openai_templates(tmp_path):
    root = tmp_path / "imagenet-val"
    for c, wnid in enumerate(["n01440764", "n01443537", "n15075141"]):  # a partial set: tench, goldfish, toilet paper
        write_images(root / wnid, [f"ILSVRC2012_val_{c}.JPEG"], seed=c)
    got, seen = prompts_seen(tiny_clip(), root=root)
    assert got["class_names"] == "imagenet-1k" and got["n_classes"] == 3 and got["n_templates"] == 80
    assert seen("a bad photo of a tench.") and seen("itap of a toilet paper.") and seen("a photo of the goldfish.")
    assert not seen("a bad photo of a n01440764.")

    (root / "n00004475").mkdir()  # a WordNet id outside ImageNet-1k
    write_images(root / "n00004475", ["x.png"])
    with pytest.raises(BenchmarkDataError, match=r"n00004475 are WordNet ids outside ImageNet-1k.*classnames=FILE"):
        prompts_seen(tiny_clip(), root=root)
    (root / "names.tsv").write_text("n00004475\torganism\nn01440764\ttench fish\nn01443537\tgoldfish\n")
    with pytest.raises(BenchmarkDataError, match=r"names.tsv: no name for class folder\(s\) n15075141"):
        prompts_seen(tiny_clip(), root=root, classnames=str(root / "names.tsv"))
    (root / "names.tsv").write_text("n00004475\torganism\nn01440764\ttench fish\nn01443537\tgoldfish\nn15075141\ttp\n")
    got, seen = prompts_seen(tiny_clip(), root=root, classnames=str(root / "names.tsv"), templates="a photo of a {}.")
    assert got["class_names"].endswith("names.tsv") and seen("a photo of a organism.") and seen("a photo of a tp.")


def test_zeroshot_class_names_file_one_per_line_and_clear_errors(tmp_path):
    root = write_image_folder(tmp_path / "data")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"the {c}" for c in sorted(CLASSES)) + "\n")
    got, seen = prompts_seen(tiny_clip(), root=root, classnames=str(names), templates="a photo of {}.")
    assert got["class_names"] == str(names) and seen("a photo of the traffic_light.") and got["n_templates"] == 1
    got, seen = prompts_seen(tiny_clip(), root=root, templates="a photo of {}.")  # no file: the folder names
    assert got["class_names"] == "folders" and seen("a photo of traffic light.")

    names.write_text("dog\ncat\n")
    with pytest.raises(BenchmarkDataError, match=r"names.txt: 2 class names for 6 class folders"):
        prompts_seen(tiny_clip(), root=root, classnames=str(names))
    names.write_text("dog\tDog\ncat\n")
    with pytest.raises(BenchmarkDataError, match=r"names.txt: line 2: expected 'folder<TAB>name'"):
        prompts_seen(tiny_clip(), root=root, classnames=str(names))
    write_images(root / "n01440764", ["x.png"])
    with pytest.raises(BenchmarkDataError, match="some class folders are WordNet ids"):
        prompts_seen(tiny_clip(), root=root)


def test_templates_parse_from_list_string_or_file(tmp_path):
    (tmp_path / "t.txt").write_text("a photo of a {}.\n\nart of the {}.\n")
    assert parse_templates(str(tmp_path / "t.txt")) == ["a photo of a {}.", "art of the {}."]
    assert parse_templates("x {}|y {}") == ["x {}", "y {}"]
    with pytest.raises(ValueError, match="must each contain"):
        parse_templates(["no placeholder"])


def write_coco(tmp_path, n=5, broken=False):
    names = [f"COCO_val2014_{i:012d}.jpg" for i in range(n)]
    write_images(tmp_path / "val2014", names, seed=11)
    captions = ["a dog on grass", "a cat", "two boats", "a kite in the sky", "pizza on a plate", "a red car"]
    data = {
        "info": {},
        "licenses": [],
        "images": [{"id": 100 + i, "file_name": n, "height": 30, "width": 40} for i, n in enumerate(names)]
        + [{"id": 999, "file_name": "uncaptioned.jpg"}],
        "annotations": [
            {"id": k, "image_id": 100 + i, "caption": captions[(i + j) % 6]}
            for k, (i, j) in enumerate((i, j) for i in range(n) for j in range(2))
        ],
    }
    if broken:
        data["images"].append({"id": 500, "file_name": "gone.jpg"})
        data["annotations"].append({"id": 77, "image_id": 500, "caption": "lost"})
    (tmp_path / "captions_val2014.json").write_text(json.dumps(data))
    return tmp_path / "captions_val2014.json", data


def test_coco_retrieval_matches_hand_recall_both_ways(tmp_path):
    path, data = write_coco(tmp_path)
    clip = tiny_clip()
    got = bench("coco-retrieval").run(clip, captions=path, images=tmp_path / "val2014", ks=(1, 2), progress=False)
    images = hand_image_embeddings(clip, [tmp_path / "val2014" / im["file_name"] for im in data["images"][:5]])
    texts = [(a["image_id"] - 100, clip.encode_text([a["caption"]])[0]) for a in data["annotations"]]
    t2i = {1: 0, 2: 0}
    for owner, text in texts:
        sims = [dot(text, im) for im in images]
        rank = sum(1 for j, s in enumerate(sims) if j != owner and s >= sims[owner])
        for k in t2i:
            t2i[k] += rank < k
    i2t = {1: 0, 2: 0}
    for index, image in enumerate(images):
        sims = [(owner == index, dot(text, image)) for owner, text in texts]
        best = max(s for mine, s in sims if mine)
        rank = sum(1 for mine, s in sims if not mine and s >= best)
        for k in i2t:
            i2t[k] += rank < k
    assert got["n_images"] == 5 and got["n_captions"] == 10
    for k in (1, 2):
        assert got[f"t2i_R@{k}"] == pytest.approx(t2i[k] / 10)
        assert got[f"i2t_R@{k}"] == pytest.approx(i2t[k] / 5)


def test_coco_retrieval_missing_image_names_the_entry(tmp_path):
    path, _ = write_coco(tmp_path, broken=True)
    with pytest.raises(BenchmarkDataError, match=r"captions_val2014.json: row images\[6\]: image 'gone.jpg' not found"):
        bench("coco-retrieval").run(tiny_clip(), captions=path, images=tmp_path / "val2014", progress=False)
    got = bench("coco-retrieval").run(
        tiny_clip(), captions=path, images=tmp_path / "val2014", skip_bad=True, progress=False
    )
    assert got["n_skipped"] == 1 and got["n_images"] == 5


def test_negation_probe_distribution_matches_hand(tmp_path):
    clip = tiny_clip()
    got = bench("negation-probe").run(clip, progress=False)
    pairs, kinds, _ = negator_pairs("template", 50, 0)
    affirmative, negated = clip.encode_text([a for a, _ in pairs]), clip.encode_text([n for _, n in pairs])
    cosines = torch.tensor([dot(a, n) for a, n in zip(affirmative, negated)])
    dist = got["cosine"]
    assert got["n_pairs"] == len(pairs) == 150 and got["n_unnegatable"] == 0 and kinds.count("presence") == 50
    assert kinds.count("held-out") == 50 and kinds[100:] == ["held-out"] * 50  # absences in unseen phrasings
    assert all(a != n and a.rstrip(".").lower() != n.rstrip(".").lower() for a, n in pairs)
    assert dist["mean"] == pytest.approx(float(cosines.mean()), abs=1e-5)
    assert got["mean_presence"] == pytest.approx(float(cosines[50:100].mean()), abs=1e-5)
    assert got["mean_held-out"] == pytest.approx(float(cosines[100:].mean()), abs=1e-5)
    middle = sorted(cosines.tolist())[74:76]
    assert dist["median"] == pytest.approx(sum(middle) / 2, abs=1e-5)
    assert dist["min"] <= dist["p05"] <= dist["p25"] <= dist["median"] <= dist["p75"] <= dist["p95"] <= dist["max"]
    assert sum(dist["histogram"]["counts"]) == 150

    records = tmp_path / "negations.jsonl"
    records.write_text(
        "\n".join(
            json.dumps({"caption": a, "negated_caption": n, "objects": [], "kind": "absence"}) for a, n in pairs[:3]
        )
        + '\n{"caption": "lonely"}\n'
    )
    with pytest.raises(BenchmarkDataError, match=r"negations.jsonl: row 4: needs a JSON object"):
        bench("negation-probe").run(clip, pairs=records, progress=False)
    assert bench("negation-probe").run(clip, pairs=records, skip_bad=True, progress=False)["n_pairs"] == 3


def test_context_blind_text_tower_gives_cosine_one():
    """The probe's point: a text tower that cannot read the words around the end token (no attention mixing, no
    positions) cannot tell a caption from its negation; the distribution sits at 1."""
    clip = tiny_clip()
    bag = tiny_clip(seed=0)
    import copy

    bag.model = copy.deepcopy(clip.model)
    with torch.no_grad():
        bag.model.transformer.resblocks[0].attn.out_proj.weight.zero_()  # no mixing between tokens
        bag.model.transformer.resblocks[0].attn.out_proj.bias.zero_()
        bag.model.positional_embedding.zero_()
    # With pooling at the end token and no mixing, every caption pools to the same vector: cosine 1.
    assert bench("negation-probe").run(bag, progress=False)["cosine"]["min"] > 0.999


@pytest.mark.e2e
def test_same_scores_through_every_backend(tmp_path):
    """Saved as an open_clip folder and as a transformers CLIPModel folder, the model scores like by hand."""
    from negation_plugins.convert import save_open_clip, save_transformers

    clip = tiny_clip()
    path, data = write_coco(tmp_path)
    specs = [f"local-dir:{save_open_clip(clip, tmp_path / 'oc')}", str(save_transformers(clip, tmp_path / "hf"))]
    for spec in specs:
        loaded = load_clip(spec)
        got = bench("coco-retrieval").run(loaded, captions=path, images=tmp_path / "val2014", progress=False)
        images = hand_image_embeddings(loaded, [tmp_path / "val2014" / im["file_name"] for im in data["images"][:5]])
        hits = 0
        for a in data["annotations"]:
            sims = [dot(loaded.encode_text([a["caption"]])[0], im) for im in images]
            owner = a["image_id"] - 100
            hits += sum(1 for j, s in enumerate(sims) if j != owner and s >= sims[owner]) < 1
        assert got["t2i_R@1"] == pytest.approx(hits / 10), spec
        assert loaded.info["backend"] in ("open_clip", "transformers")
