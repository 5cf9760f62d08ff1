"""MCQ benchmark: scoring with known answers, NegBench CSV reading, clear errors for malformed rows, the shared
options (skip-and-count, text cache), and retrieval on dictated embeddings."""

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from negation_plugins import plugins
from negation_plugins.benchmarks.common import BenchmarkDataError
from negation_plugins.benchmarks.mcq import mcq_accuracy, mcq_predictions, read_mcq_csv, run_mcq
from negation_plugins.factory import ClipBundle

HEADER = ["image_path", "correct_answer", "caption_0", "caption_1", "caption_2", "caption_3", "correct_answer_template"]


class LookupClip(torch.nn.Module):
    """A tiny real CLIP-shaped module whose answers we dictate: each caption gets its own orthogonal embedding and
    the image whose top-left red value is k embeds exactly like the caption ``choices[k]``."""

    def __init__(self, captions, choices):
        super().__init__()
        self.vocab = {c: i for i, c in enumerate(captions)}
        self.text = torch.nn.Embedding.from_pretrained(torch.eye(len(captions)))
        image_rows = torch.zeros(256, len(captions))
        for red, caption in choices.items():
            image_rows[red] = self.text.weight[self.vocab[caption]]
        self.visual = torch.nn.Embedding.from_pretrained(image_rows)  # `visual` marks a vision tower
        self.logit_scale = torch.nn.Parameter(torch.tensor(0.0))

    def encode_text(self, tokens, normalize=True):
        x = self.text(tokens[:, 0])
        return F.normalize(x, dim=-1) if normalize else x

    def encode_image(self, pixels, normalize=True):
        x = self.visual(pixels.long())
        return F.normalize(x, dim=-1) if normalize else x


def lookup_bundle(captions, choices):
    model = LookupClip(captions, choices)
    return ClipBundle(
        model=model,
        tokenizer=lambda texts: torch.tensor([[model.vocab[t]] for t in texts]),
        preprocess=lambda image: torch.tensor(image.getpixel((0, 0))[0]),
        spec="lookup:test",
    )


def write_image(path, red):
    Image.new("RGB", (8, 8), (red, 0, 0)).save(path)
    return path


def write_csv(path, rows, header=HEADER):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


ITEMS = [
    # image, answer, four captions, template, caption the model picks
    ("a.png", 1, ["A star.", "A circle.", "A ring.", "A box."], "positive", "A circle."),
    ("b.png", 0, ["There is no star.", "There is no circle.", "A star.", "No box."], "negative", "There is no circle."),
    (
        "c.png",
        3,
        ["A box but no ring.", "A ring but no box.", "A ring.", "A circle but no box."],
        "hybrid",
        "A circle but no box.",
    ),
]


@pytest.fixture
def three_items(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    rows = []
    for red, (name, answer, captions, template, _) in enumerate(ITEMS, start=1):
        write_image(images / name, red)
        rows.append([name, answer, *captions, template])
    captions = sorted({c for item in ITEMS for c in item[2]})
    clip = lookup_bundle(captions, {red: item[4] for red, item in enumerate(ITEMS, start=1)})
    return clip, write_csv(tmp_path / "mcq.csv", rows), images


def test_hand_built_items_score_as_dictated(three_items):
    clip, path, images = three_items
    result = plugins.get_one("benchmarks", "mcq").run(clip, csv=str(path), images=str(images), progress=False)
    assert result["n_items"] == 3 and result["n_skipped"] == 0
    assert result["accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert (result["affirmation"], result["negation"], result["hybrid"]) == (1.0, 0.0, 1.0)
    assert (result["n_affirmation"], result["n_negation"], result["n_hybrid"]) == (1, 1, 1)


def test_phrasing_split_columns_give_seen_and_held_out_accuracy(three_items, tmp_path):
    """The world's extra columns (after NegBench's): per split, that split's negation/hybrid items plus all
    affirmation items; the negation item (answered wrong) is held-out, the hybrid one (right) is in a train family."""
    clip, path, images = three_items
    rows = list(csv.reader(open(path)))[1:]
    extra = [["", ""], ["x-free", "held-out"], ["no", "train"]]
    split_csv = write_csv(
        tmp_path / "split.csv", [r + e for r, e in zip(rows, extra)], HEADER + ["phrasing", "phrasing_split"]
    )
    result = run_mcq(clip, split_csv, images, progress=False)
    assert result["accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    seen, held_out = result["by_phrasing_split"]["train"], result["by_phrasing_split"]["held-out"]
    assert (seen["accuracy"], seen["n_items"], seen["hybrid"], seen["negation"]) == (1.0, 2, 1.0, None)
    assert (held_out["accuracy"], held_out["n_items"], held_out["negation"]) == (0.5, 2, 0.0)
    assert result["by_phrasing"] == {
        "no": {"split": "train", "accuracy": 1.0, "n_items": 1},
        "x-free": {"split": "held-out", "accuracy": 0.0, "n_items": 1},
    }
    assert [r.phrasing for r in read_mcq_csv(split_csv)] == ["", "x-free", "no"]
    assert "by_phrasing_split" not in run_mcq(clip, path, images, progress=False)  # a NegBench CSV: no split


def test_scoring_functions():
    image = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    options = torch.tensor(
        [[[0.0, 1.0], [1.0, 0.1], [0.5, 0.5], [-1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.0, -1.0]]]
    )
    assert mcq_predictions(image, options).tolist() == [1, 0]
    result = mcq_accuracy(torch.tensor([1, 0]), [1, 2], ["affirmation", "affirmation"])
    assert result["accuracy"] == 0.5 and result["affirmation"] == 0.5 and result["negation"] is None


def test_reads_negbench_layout_with_absolute_paths_and_extra_columns(tmp_path):
    image = write_image(tmp_path / "COCO_val2014_000000000042.png", 1)
    header = ["Unnamed: 0"] + HEADER + ["source"]
    path = write_csv(
        tmp_path / "COCO_val_mcq_llama3.1_rephrased.csv",
        [
            ["0", str(image), "1", "A dog, but no cat.", "A cat.", "No dog.", "A cat but no dog.", "hybrid", "x"],
            ["1", str(image), "3.0", "A dog.", "A cat.", "No dog.", "No cat is present.", "negative", "x"],
            ["2", str(image), "0", "A dog and a frisbee.", "A cat.", "A horse.", "A frisbee.", "positive", "x"],
        ],
        header=header,
    )
    rows = read_mcq_csv(path)
    assert [r.type for r in rows] == ["hybrid", "negation", "affirmation"]
    assert [r.correct_answer for r in rows] == [1, 3, 0]
    assert rows[0].captions[1] == "A cat." and rows[2].image_path == str(image)
    captions = sorted({c for r in rows for c in r.captions})
    clip = lookup_bundle(captions, {1: "A cat."})
    result = run_mcq(clip, path, images=tmp_path / "elsewhere", progress=False)  # absolute paths ignore the root
    assert result["n_items"] == 3 and result["hybrid"] == 1.0 and result["negation"] == 0.0


@pytest.mark.parametrize(
    "row, message",
    [
        (["a.png", "7", "w", "x", "y", "z", "positive"], "row 2: correct_answer 7 is out of range"),
        (["a.png", "one", "w", "x", "y", "z", "positive"], "row 2: correct_answer 'one' is not a number"),
        (["a.png", "1", "w", "", "y", "z", "positive"], "row 2: empty or missing value for caption_1"),
        (["a.png", "1", "w", "x", "y", "z", "maybe"], "row 2: correct_answer_template 'maybe'"),
    ],
)
def test_malformed_row_is_named(tmp_path, row, message):
    good = ["a.png", "0", "w", "x", "y", "z", "negative"]
    path = write_csv(tmp_path / "bad.csv", [good, row])
    with pytest.raises(BenchmarkDataError, match=message) as err:
        read_mcq_csv(path)
    assert str(path) in str(err.value)


def test_missing_column_is_named(tmp_path):
    path = write_csv(
        tmp_path / "bad.csv",
        [["a.png", "0", "w", "x", "y", "negative"]],
        header=[h for h in HEADER if h != "caption_3"],
    )
    with pytest.raises(BenchmarkDataError, match="missing column.*caption_3"):
        read_mcq_csv(path)


def test_missing_image_errors_or_is_skipped_and_counted(three_items):
    clip, path, images = three_items
    (images / "b.png").unlink()
    with pytest.raises(BenchmarkDataError, match=r"mcq.csv: row 2: image 'b.png' not found; tried .*b.png"):
        run_mcq(clip, path, images, progress=False)
    result = run_mcq(clip, path, images, skip_bad=True, progress=False)
    assert result["n_skipped"] == 1 and result["n_items"] == 2 and result["accuracy"] == 1.0


def test_coco_retrieval_recall_at_1_on_dictated_embeddings(tmp_path):
    write_image(tmp_path / "A.png", 1)
    write_image(tmp_path / "B.png", 2)
    captions = {
        "images": [{"id": 1, "file_name": "A.png"}, {"id": 2, "file_name": "B.png"}],
        "annotations": [
            {"id": 1, "image_id": 1, "caption": "a1"},
            {"id": 2, "image_id": 1, "caption": "a2"},
            {"id": 3, "image_id": 2, "caption": "b1"},
        ],
    }
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(captions))
    clip = lookup_bundle(["a1", "a2", "b1"], {1: "a1", 2: "a2"})  # image B looks like A's second caption
    retrieval = plugins.get_one("benchmarks", "coco-retrieval")
    result = retrieval.run(clip, captions=str(path), images=str(tmp_path), progress=False)
    # b1 ties A and B (both 0): ties count against the model, so it is a miss
    assert result["i2t_R@1"] == 0.5 and result["t2i_R@1"] == pytest.approx(1 / 3, abs=1e-4)
    assert result["n_images"] == 2 and result["n_captions"] == 3
    first_only = retrieval.run(clip, captions=path, images=tmp_path, captions_per_image=1, progress=False)
    assert first_only["n_captions"] == 2 and first_only["i2t_R@1"] == 0.5
