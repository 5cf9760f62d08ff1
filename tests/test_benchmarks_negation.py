"""Public negation benchmarks, each on a fixture written in the exact public layout and checked against a direct
hand computation with a tiny real CLIP: NegBench retrieval, CC-Neg, VALSE existence, NegRefCOCOg."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from PIL import Image

from negation_plugins import plugins
from negation_plugins.benchmarks.common import BenchmarkDataError
from tests.test_benchmarks_common import (
    dot,
    hand_image_embeddings,
    tiny_clip,
    write_images,
)

CAPTIONS = [
    "a red square",
    "no blue circle here",
    "a photo without a dog",
    "a cat on a mat",
    "an empty street",
    "there is no tree",
    "a car and a bus",
    "nothing but sky",
]


def bench(name):
    return plugins.get_one("benchmarks", name)


# --- NegBench retrieval -------------------------------------------------------------------------------------


def write_retrieval_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "captions"])
        for filepath, captions in rows:
            writer.writerow([filepath, captions if isinstance(captions, str) else repr(captions)])
    return path


def test_negbench_retrieval_matches_hand_recall(tmp_path):
    names = [f"COCO_val2014_{i:012d}.jpg" for i in range(6)]
    write_images(tmp_path / "val2014", names)
    rows = [(f"/data/coco/val2014/{n}", [CAPTIONS[i], CAPTIONS[(i + 3) % 8]]) for i, n in enumerate(names)]
    csv_path = write_retrieval_csv(tmp_path / "COCO_val_negated_retrieval.csv", rows)
    clip = tiny_clip()
    got = bench("negbench-retrieval").run(clip, csv=csv_path, images=tmp_path / "val2014", ks=(1, 2, 5), progress=False)

    images = hand_image_embeddings(clip, [tmp_path / "val2014" / n for n in names])
    hits = {1: 0, 2: 0, 5: 0}
    total = 0
    for owner, (_, caps) in enumerate(rows):
        for caption in caps:
            text = clip.encode_text([caption])[0]
            sims = [dot(text, image) for image in images]
            rank = sum(1 for j, s in enumerate(sims) if j != owner and s >= sims[owner])
            total += 1
            hits = {k: hit + (rank < k) for k, hit in hits.items()}
    assert got["n_images"] == 6 and got["n_captions"] == total == 12 and got["n_skipped"] == 0
    for k in hits:
        assert got[f"t2i_R@{k}"] == pytest.approx(hits[k] / total)


def test_negbench_retrieval_bad_rows_error_or_skip(tmp_path):
    write_images(tmp_path, ["a.jpg", "b.jpg"])
    csv_path = write_retrieval_csv(
        tmp_path / "r.csv",
        [
            ("a.jpg", ["a dog"]),
            ("b.jpg", "__import__('os').system('echo hacked')"),
            ("missing.jpg", ["a cat"]),
            ("b.jpg", ["no cat"]),
        ],
    )
    with pytest.raises(BenchmarkDataError, match=r"r.csv: row 3: 'captions' is not a Python list literal"):
        bench("negbench-retrieval").run(tiny_clip(), csv=csv_path, progress=False)
    got = bench("negbench-retrieval").run(tiny_clip(), csv=csv_path, skip_bad=True, progress=False)
    assert got["n_skipped"] == 2 and got["n_images"] == 2
    assert any("row 4" in s and "missing.jpg" in s for s in got["skipped"])
    (tmp_path / "nocol.csv").write_text("path,captions\na.jpg,['x']\n")
    with pytest.raises(BenchmarkDataError, match="missing column.*filepath"):
        bench("negbench-retrieval").run(tiny_clip(), csv=tmp_path / "nocol.csv", progress=False)


# --- CC-Neg -------------------------------------------------------------------------------------------------


def write_ccneg(path, items):
    """The public layout: a torch file {"image_paths": [...], "annotations": [{"json": {...}, "sop_data": {...}}]}."""
    torch.save(
        {
            "image_paths": [p for p, _, _ in items],
            "annotations": [
                {"json": {"caption": t, "key": str(i)}, "sop_data": {"negative-prompt": n, "subject": "x"}}
                for i, (_, t, n) in enumerate(items)
            ],
        },
        path,
    )
    return path


def test_ccneg_scores_the_last_eval_size_items_like_by_hand(tmp_path):
    names = [f"{i:05d}.jpg" for i in range(8)]
    write_images(tmp_path / "cc3m", names, seed=3)
    items = [(f"/cc3m/training/{n}", CAPTIONS[i], "not " + CAPTIONS[(i + 1) % 8]) for i, n in enumerate(names)]
    path = write_ccneg(tmp_path / "ccneg_clip.pt", items)
    clip = tiny_clip()
    got = bench("ccneg").run(clip, file=path, images=tmp_path / "cc3m", eval_size=5, progress=False)
    images = hand_image_embeddings(clip, [tmp_path / "cc3m" / n for n in names[3:]])
    correct = [
        dot(img, clip.encode_text([t])[0]) > dot(img, clip.encode_text([n])[0])
        for img, (_, t, n) in zip(images, items[3:])
    ]
    assert got["n_items"] == 5 and got["eval_start"] == 3
    assert got["accuracy"] == pytest.approx(sum(correct) / 5)
    with pytest.raises(BenchmarkDataError, match="has 8 items, cannot take the last eval_size=40000"):
        bench("ccneg").run(clip, file=path, images=tmp_path / "cc3m", progress=False)


def test_ccneg_refuses_code_carrying_pickles_and_reports_bad_annotations(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"image_paths": [], "annotations": [Payload()]}, evil)
    with pytest.raises(BenchmarkDataError, match="refused to load"):
        bench("ccneg").run(tiny_clip(), file=evil, eval_size=1, progress=False)
    write_images(tmp_path, ["a.jpg"])
    bad = tmp_path / "bad.pt"
    torch.save(
        {
            "image_paths": ["a.jpg", "a.jpg"],
            "annotations": [{"json": {}}, {"json": {"caption": "x"}, "sop_data": {"negative-prompt": "not x"}}],
        },
        bad,
    )
    with pytest.raises(BenchmarkDataError, match=r"bad.pt: row 0: annotation lacks"):
        bench("ccneg").run(tiny_clip(), file=bad, images=tmp_path, eval_size=2, progress=False)
    assert (
        bench("ccneg").run(tiny_clip(), file=bad, images=tmp_path, eval_size=2, skip_bad=True, progress=False)[
            "n_skipped"
        ]
        == 1
    )


# --- VALSE existence ----------------------------------------------------------------------------------------


def test_valse_existence_filters_mturk_and_matches_hand_accuracy(tmp_path):
    names = [f"v7w_{i}.jpg" for i in range(6)]
    write_images(tmp_path / "visual7w", names, seed=5)
    data = {
        f"{i}": {
            "dataset": "visual7w",
            "original_split": "test",
            "dataset_idx": f"v7w_{i}",
            "linguistic_phenomena": "existence",
            "image_file": n,
            "caption": CAPTIONS[i],
            "foil": "no " + CAPTIONS[i],
            "classes": None,
            "classes_foil": None,
            "mturk": {"foil": 3 - (i % 4), "caption": i % 4, "other": 0},
        }
        for i, n in enumerate(names)
    }
    path = tmp_path / "existence.json"
    path.write_text(json.dumps(data))
    clip = tiny_clip()
    got = bench("valse-existence").run(clip, file=path, images=tmp_path / "visual7w", progress=False)
    kept = [i for i in range(6) if i % 4 >= 2]
    images = hand_image_embeddings(clip, [tmp_path / "visual7w" / names[i] for i in kept])
    correct = [
        dot(img, clip.encode_text([CAPTIONS[i]])[0]) > dot(img, clip.encode_text(["no " + CAPTIONS[i]])[0])
        for img, i in zip(images, kept)
    ]
    assert got["n_items"] == len(kept) == 2 and got["n_filtered_mturk"] == 4
    assert got["accuracy"] == pytest.approx(sum(correct) / len(kept))

    del data["1"]["mturk"]
    path.write_text(json.dumps(data))
    with pytest.raises(
        BenchmarkDataError, match=r"existence.json: row 1: needs image_file, caption, foil and an integer mturk"
    ):
        bench("valse-existence").run(clip, file=path, images=tmp_path / "visual7w", progress=False)


# --- NegRefCOCOg --------------------------------------------------------------------------------------------


def write_negrefcocog(tmp_path, n_items=12, seed=7):
    names = [f"COCO_train2014_{i:012d}.jpg" for i in range(n_items)]
    write_images(tmp_path / "train2014", names, seed=seed, size=(64, 48))
    items = [
        {
            "image": n,
            "phrase": f"the object that is not {CAPTIONS[i % 8]}",
            "ref_bbox": [2.5, 4.0, 20.0, 18.0],
            "bbox_list": [[2.5, 4.0, 20.0, 18.0], [30, 10, 25, 30], [10, 25, 16, 16]],
        }
        for i, n in enumerate(names)
    ]
    path = tmp_path / "NegRefCOCOg.json"
    path.write_text(json.dumps(items))
    return path, items


def test_negrefcocog_crop_and_match_matches_hand(tmp_path):
    path, items = write_negrefcocog(tmp_path)
    clip = tiny_clip()
    got = bench("negrefcocog").run(clip, file=path, images=tmp_path / "train2014", progress=False)
    hits = 0
    for item in items:
        image = Image.open(tmp_path / "train2014" / item["image"]).convert("RGB")
        text = clip.encode_text([item["phrase"]])[0]
        scores = []
        for x, y, w, h in item["bbox_list"]:
            piece = image.crop((math.floor(x), math.floor(y), math.ceil(x + w), math.ceil(y + h)))
            scores.append(dot(clip.encode_image(clip.preprocess(piece)[None])[0], text))
        hits += max(range(3), key=lambda j: scores[j]) == 0  # no ties with distinct crops: order does not matter
    assert got["n_items"] == 12 and got["n_crops"] == 36
    assert got["accuracy"] == pytest.approx(hits / 12)


def test_negrefcocog_shuffles_so_ties_do_not_favour_the_reference(tmp_path):
    path, _ = write_negrefcocog(tmp_path, n_items=30)
    clip = tiny_clip()
    blind = tiny_clip(seed=0)
    blind.model = _copy_with_blind_vision(clip.model)
    crops = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    assert torch.equal(*blind.encode_image(crops).unbind())
    results = [
        bench("negrefcocog").run(blind, file=path, images=tmp_path / "train2014", seed=s, progress=False)["accuracy"]
        for s in (0, 0, 1)
    ]
    assert results[0] == results[1]  # seeded: reproducible
    assert 0.1 < results[0] < 0.6 and 0.1 < results[2] < 0.6  # chance is 1/3; unshuffled argmax would give 1.0


def _copy_with_blind_vision(model):
    """The same CLIP with a vision tower that maps every image to the zero vector: every crop ties."""
    import copy

    blind = copy.deepcopy(model)
    with torch.no_grad():
        blind.visual.ln_post.weight.zero_()
        blind.visual.ln_post.bias.zero_()
    return blind


def test_negrefcocog_boxes_outside_image_and_bad_reference_are_reported(tmp_path):
    path, items = write_negrefcocog(tmp_path, n_items=3)
    items[1]["bbox_list"][2] = [500, 500, 10, 10]
    items[2]["ref_bbox"] = [1, 1, 1, 1]
    path.write_text(json.dumps(items))
    with pytest.raises(BenchmarkDataError, match=r"NegRefCOCOg.json: row 1: a box lies outside the 64x48 image"):
        bench("negrefcocog").run(tiny_clip(), file=path, images=tmp_path / "train2014", progress=False)
    got = bench("negrefcocog").run(tiny_clip(), file=path, images=tmp_path / "train2014", skip_bad=True, progress=False)
    assert got["n_items"] == 1 and got["n_skipped"] == 2 and "is not one of bbox_list" in got["skipped"][1]
