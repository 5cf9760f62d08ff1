"""Readers/writers of caption sources and negation records, and their errors on bad input."""

import json

import pytest
from PIL import Image

from negation_plugins.data.io import (
    DataError,
    NegationRecord,
    read_caption_table,
    read_coco_captions,
    read_negation_records,
    write_negation_records,
    write_negationclip_json,
)


def _coco(tmp_path, annotations=None, images=None, write_images=True):
    images = images if images is not None else [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}]
    annotations = (
        annotations
        if annotations is not None
        else [
            {"id": 10, "image_id": 1, "caption": "a dog on a couch."},
            {"id": 11, "image_id": 2, "caption": "a cat and a laptop."},
        ]
    )
    (tmp_path / "images").mkdir(exist_ok=True)
    if write_images:
        for image in images:
            Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "images" / image["file_name"])
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({
        "images": images,
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "couch"}, {"id": 3, "name": "cat"}],
        "annotations": [{"image_id": 1, "category_id": 1}, {"image_id": 1, "category_id": 2},
                        {"image_id": 2, "category_id": 3}],
    }))  # fmt: skip
    return path, instances, tmp_path / "images"


def test_coco_captions_with_instances(tmp_path):
    captions, instances, images = _coco(tmp_path)
    caption_set = read_coco_captions(captions, instances, images)
    assert [(i.image, i.caption, i.objects) for i in caption_set.items] == [
        ("a.png", "a dog on a couch.", ("couch", "dog")),
        ("b.png", "a cat and a laptop.", ("cat",)),
    ]
    assert caption_set.categories == ["dog", "couch", "cat"]


@pytest.mark.parametrize(
    "annotations, message",
    [
        ([{"id": 1, "image_id": 9, "caption": "x"}], "image_id 9 is not in the file's 'images' list"),
        ([{"id": 1, "image_id": 1, "caption": "   "}], "annotations[0] (id 1): empty caption"),
        ([{"id": 1, "image_id": 1, "caption": 42}], "caption must be a string, got int 42"),
        ([{"id": 1, "caption": "x"}], "needs 'image_id' and 'caption'"),
    ],
)
def test_bad_captions_name_file_and_record(tmp_path, annotations, message):
    captions, _, _ = _coco(tmp_path, annotations=annotations)
    with pytest.raises(DataError, match="captions.json") as error:
        read_coco_captions(captions)
    assert message in str(error.value)


def test_malformed_json_names_file_and_position(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text('{"images": [}')
    with pytest.raises(DataError, match=r"captions.json: malformed JSON .* line 1 column 13"):
        read_coco_captions(path)


def test_missing_and_corrupt_images_fail_or_are_counted(tmp_path):
    captions, _, images = _coco(tmp_path)
    (images / "a.png").unlink()
    (images / "b.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"annotations\[0\] .*missing image file.*a.png.*--skip-bad-images"):
        read_coco_captions(captions, images=images)
    (images / "a.png").write_bytes((images / "b.png").read_bytes())
    with pytest.raises(DataError, match=r"corrupt image file"):
        read_coco_captions(captions, images=images)
    Image.new("RGB", (4, 4)).save(images / "a.png")
    caption_set = read_coco_captions(captions, images=images, skip_bad_images=True)
    assert [i.image for i in caption_set.items] == ["a.png"] and caption_set.skipped_bad_images == 1


def test_caption_tables_jsonl_and_csv(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"image": "a.png", "caption": "a dog", "objects": ["dog"]}\n\n'
                                      '{"image": "b.png", "caption": "a cat"}\n')  # fmt: skip
    items = read_caption_table(tmp_path / "c.jsonl").items
    assert [(i.image, i.caption, i.objects) for i in items] == [("a.png", "a dog", ("dog",)), ("b.png", "a cat", None)]
    (tmp_path / "c.csv").write_text("filepath,caption\na.png,a dog\nb.png,\n")
    with pytest.raises(DataError, match=r"c.csv: row 3: empty caption"):
        read_caption_table(tmp_path / "c.csv")
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png", "caption": "x"}\n{"image": "a.png", caption}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: malformed JSON"):
        read_caption_table(tmp_path / "bad.jsonl")


RECORDS = [
    NegationRecord("a.png", 1, "a dog.", "A dog, without a cat.", ["cat"], "absence", "template", "annotations"),
    NegationRecord("a.png", 1, "a dog.", "There is no dog in this image.", ["dog"], "presence", "template", None),
    NegationRecord("b.png", None, "a cat.", "A cat but no dogs.", ["dog"], "absence", "llm", "vqa"),
]


def test_jsonl_records_round_trip_and_validation(tmp_path):
    path = tmp_path / "r.jsonl"
    assert write_negation_records(RECORDS, path) == 3
    assert read_negation_records(path) == RECORDS
    path.write_text(json.dumps({**json.loads(RECORDS[0].to_json()), "kind": "maybe"}) + "\n")
    with pytest.raises(DataError, match=r"r.jsonl: line 1: 'kind' must be one of absence, presence"):
        read_negation_records(path)


def test_negationclip_json_round_trip(tmp_path):
    path = tmp_path / "negationclip.json"
    assert write_negationclip_json(RECORDS, path) == 2  # presence records are not NegationCLIP data
    data = json.loads(path.read_text())
    assert {a["updated_caption"] for a in data["annotations"]} == {"A dog, without a cat.", "A cat but no dogs."}
    back = read_negation_records(path)
    assert [(r.image, r.caption, r.negated_caption, r.objects, r.kind) for r in back] == [
        (r.image, r.caption, r.negated_caption, r.objects, r.kind) for r in RECORDS if r.kind == "absence"
    ]
    # NegationCLIP's own files: plain COCO captions with updated_caption on kept annotations only.
    (tmp_path / "theirs.json").write_text(json.dumps({
        "images": [{"id": 5, "file_name": "COCO_train2014_000000000005.jpg"}],
        "annotations": [{"id": 1, "image_id": 5, "caption": "a horse", "updated_caption": "a horse with no rider"},
                        {"id": 2, "image_id": 5, "caption": "a field"}],
    }))  # fmt: skip
    (record,) = read_negation_records(tmp_path / "theirs.json")
    assert (record.image_id, record.negated_caption, record.kind) == (5, "a horse with no rider", "absence")


def test_jsonl_records_under_a_json_name(tmp_path):
    path = tmp_path / "records.json"
    write_negation_records(RECORDS, path)
    assert read_negation_records(path) == RECORDS
