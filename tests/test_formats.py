"""Readers of the training formats people hold, on files written here in the published layouts."""

from __future__ import annotations

import io
import json
import pickle

import pandas as pd
import pytest
import torch
from PIL import Image

from negation_plugins.data import formats
from negation_plugins.data.formats import Row, Skips, detect_format, expand_braces, read_rows
from negation_plugins.data.io import DataError


def _jpg(color=(200, 30, 30), size=16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_negcap(path, rows):
    """NegBench's writer: pandas ``to_csv(index=False)`` with ``str(list)`` in the negative_captions cell."""
    frame = pd.DataFrame(
        [{"filepath": image, "caption": caption, "negative_captions": str(negs)} for image, caption, negs in rows]
    )
    frame.to_csv(path, index=False)
    return path


def write_negmcq(path, rows):
    """``create_mcq.py``'s column order: correct_answer, caption_0..3, correct_answer_template, image_path."""
    frame = pd.DataFrame(
        [
            {
                "correct_answer": answer,
                **{f"caption_{i}": c for i, c in enumerate(options)},
                "correct_answer_template": template,
                "image_path": image,
            }  # fmt: skip
            for image, options, answer, template in rows
        ]
    )
    frame.to_csv(path, index=False)
    return path


def write_img2dataset_shards(folder, n_shards, per_shard, extra=None):
    """Shards as img2dataset writes them (via webdataset's ShardWriter): 9-digit keys (5 shard + 4 index), jpg,
    txt, json with key/caption/width/height/status, and a ``{shard}_stats.json`` beside each."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / "cc12m-train-%04d.tar"), maxcount=per_shard, verbose=0) as sink:
        for shard in range(n_shards):
            for index in range(per_shard):
                key = f"{shard:05d}{index:04d}"
                caption = f"a photo number {shard * per_shard + index}, with a red square"
                meta = {"url": f"http://example.invalid/{key}.jpg", "caption": caption, "key": key,
                        "status": "success", "error_message": None, "width": 16, "height": 16,
                        "original_width": 64, "original_height": 48, **(extra(shard, index) if extra else {})}  # fmt: skip
                sink.write({"__key__": key, "jpg": _jpg((shard * 40 % 256, index * 20 % 256, 90)), "txt": caption,
                            "json": meta})  # fmt: skip
    for shard in range(n_shards):
        stats = {"count": per_shard, "successes": per_shard, "failed_to_download": 0, "failed_to_resize": 0}
        (folder / f"cc12m-train-{shard:04d}_stats.json").write_text(json.dumps(stats))
    return str(folder / f"cc12m-train-{{0000..{n_shards - 1:04d}}}.tar")


def write_ccneg(path, n):
    torch.save(
        {
            "image_paths": [f"images/{i:06d}.jpg" for i in range(n)],
            "annotations": [
                {"json": {"caption": f"a dog on grass {i}"}, "sop_data": {"negative-prompt": f"no dog on grass {i}"}}
                for i in range(n)
            ],
        },
        path,
    )
    return path


def test_expand_braces_like_webdataset():
    assert expand_braces("a-{0000..0002}.tar") == ["a-0000.tar", "a-0001.tar", "a-0002.tar"]
    assert expand_braces("{x,y}-{1..2}.tar") == ["x-1.tar", "x-2.tar", "y-1.tar", "y-2.tar"]
    assert expand_braces("a.tar::b-{08..10}.tar") == ["a.tar", "b-08.tar", "b-09.tar", "b-10.tar"]


def test_negcap_rows_are_absence_rows_from_the_list_cell(tmp_path):
    path = write_negcap(
        tmp_path / "negcap.csv",
        [
            ("/data/cc12m/0001.jpg", 'a dog, "happy", on a couch', ["a dog on a couch, no cat", "no cat is here"]),
            ("/data/cc12m/0002.jpg", "a tree", ["a tree without birds"]),
        ],
    )
    assert detect_format(str(path)) == "negcap"
    rows = list(read_rows(str(path)))
    assert rows[0] == Row("/data/cc12m/0001.jpg", 'a dog, "happy", on a couch',
                          absence=("a dog on a couch, no cat", "no cat is here"), negator="negbench")  # fmt: skip
    assert rows[1].absence == ("a tree without birds",) and rows[1].presence == ()
    assert [r.kind for r in rows[0].records()] == ["absence", "absence"]


def test_negcap_list_cell_is_never_evaluated(tmp_path):
    path = write_negcap(tmp_path / "negcap.csv", [("a.jpg", "a cat", ["no dog"])])
    text = path.read_text().replace("['no dog']", "\"__import__('os').getcwd()\"")
    path.write_text(text)
    with pytest.raises(DataError, match=r"negcap\.csv: row 2: negative_captions is not a Python list literal"):
        list(read_rows(str(path)))


def test_negcap_bad_rows_fail_naming_the_row_or_are_counted(tmp_path):
    path = write_negcap(
        tmp_path / "negcap.csv",
        [("a.jpg", "a cat", ["no dog"]), ("b.jpg", "a bird", "[broken"), ("c.jpg", "a fish", [])],
    )
    with pytest.raises(DataError, match=r"negcap\.csv: row 3: "):
        list(read_rows(str(path)))
    skips = Skips(skip_bad=True)
    rows = list(read_rows(str(path), skips=skips))
    assert [r.image for r in rows] == ["a.jpg"] and skips.count == 2
    assert "row 4: negative_captions holds no caption" in skips.messages[1]


def test_rows_are_read_lazily(tmp_path):
    """The first row comes out before a bad last row is reached: nothing is read ahead of need."""
    rows = [(f"{i}.jpg", f"caption {i}", [f"no cat {i}"]) for i in range(1000)] + [("x.jpg", "x", "[")]
    path = write_negcap(tmp_path / "negcap.csv", rows)
    stream = read_rows(str(path))
    assert next(stream).image == "0.jpg"
    with pytest.raises(DataError, match="row 1002"):
        list(stream)


def test_negmcq_rows_hold_the_question(tmp_path):
    path = write_negmcq(
        tmp_path / "negmcq.csv",
        [
            ("img/1.jpg", ["a cat", "no cat", "a cat but no dog", "a dog"], 2, "hybrid"),
            ("img/2.jpg", ["a tree", "no tree", "a bird", "no bird"], 0, "positive"),
        ],  # fmt: skip
    )
    assert detect_format(str(path)) == "negmcq"
    first, second = read_rows(str(path))
    assert (first.image, first.caption, first.presence) == (
        "img/1.jpg",
        "a cat but no dog",
        ("a cat", "no cat", "a dog"),
    )
    assert second.caption == "a tree" and len(second.presence) == 3
    bad = write_negmcq(tmp_path / "bad.csv", [("img/1.jpg", ["a", "b", "c", "d"], 7, "negative")])
    with pytest.raises(DataError, match=r"bad\.csv: row 2: correct_answer 7 is out of range"):
        list(read_rows(str(bad)))


def test_a_csv_of_other_columns_is_refused_naming_them(tmp_path):
    path = tmp_path / "other.csv"
    pd.DataFrame([{"image": "a.jpg", "text": "x"}]).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"other\.csv: a CSV with columns image, text is neither NegBench NegCap"):
        detect_format(str(path))


def test_img2dataset_shards_by_brace_pattern(tmp_path):
    pattern = write_img2dataset_shards(tmp_path / "shards", n_shards=3, per_shard=4)
    assert detect_format(pattern) == "webdataset"
    rows = list(read_rows(pattern))
    assert len(rows) == 12
    assert rows[5].image == "cc12m-train-0001.tar#000010001"
    assert rows[5].caption == "a photo number 5, with a red square"
    assert formats.decode_image(rows[5].image_bytes).size == (16, 16)
    assert rows[5].absence == rows[5].presence == ()  # captions only: input for `negclip generate`
    assert formats.count_rows(formats.source_units(pattern)[0][0], "webdataset") == 4


def test_shard_samples_carry_their_negations_in_json(tmp_path):
    def negations(shard, index):
        if index % 2:
            return {"negative_captions": str([f"no cat {index}", f"without dogs {index}"])}
        return {"negations": [{"negated_caption": f"no bird {index}", "kind": "absence", "objects": ["bird"]},
                              {"negated_caption": f"a bird {index}", "kind": "presence", "objects": ["bird"]}]}  # fmt: skip

    pattern = write_img2dataset_shards(tmp_path / "shards", n_shards=1, per_shard=2, extra=negations)
    even, odd = read_rows(pattern)
    assert (even.absence, even.presence, even.absent_objects) == (("no bird 0",), ("a bird 0",), ("bird",))
    assert odd.absence == ("no cat 1", "without dogs 1")


def test_missing_shards_are_named(tmp_path):
    pattern = write_img2dataset_shards(tmp_path / "shards", n_shards=2, per_shard=2)
    with pytest.raises(DataError, match=r"1 of 3 shard\(s\) not found, e\.g\. .*cc12m-train-0002\.tar"):
        list(read_rows(pattern.replace("0001", "0002")))


def test_ccneg_train_split_leaves_out_the_last_40000(tmp_path):
    path = write_ccneg(tmp_path / "ccneg_preprocessed.pt", formats.CCNEG_EVAL_SIZE + 3)
    assert detect_format(str(path)) == "ccneg"
    rows = list(read_rows(str(path)))
    assert [r.caption for r in rows] == ["a dog on grass 0", "a dog on grass 1", "a dog on grass 2"]
    assert rows[0].presence == ("no dog on grass 0",) and rows[0].image == "images/000000.jpg"
    evaluation = list(read_rows(str(path), split="eval"))
    assert len(evaluation) == formats.CCNEG_EVAL_SIZE and evaluation[0].caption == "a dog on grass 3"


def test_ccneg_is_loaded_without_running_pickled_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"image_paths": [Payload()], "annotations": []}, f, protocol=2)
    with pytest.raises(DataError, match=r"evil\.pt: not a loadable CC-Neg file"):
        list(read_rows(str(path)))


def test_jsonl_records_group_into_rows_and_negationclip_json(tmp_path):
    from negation_plugins.data.io import NegationRecord, write_negation_records, write_negationclip_json

    records = [
        NegationRecord("a.jpg", 1, "a cat", "no dog", ["dog"], "absence", "template", None),
        NegationRecord("a.jpg", 1, "a cat", "a dog", ["dog"], "presence", "template", None),
        NegationRecord("b.jpg", 2, "a tree", "no bird", ["bird"], "absence", "template", None),
    ]
    write_negation_records(records, tmp_path / "r.jsonl")
    first, second = read_rows(str(tmp_path / "r.jsonl"))
    assert formats.count_rows(str(tmp_path / "r.jsonl"), "jsonl") == 2  # the fast count finds the same rows
    assert (first.absence, first.presence, first.present_objects) == (("no dog",), ("a dog",), ("dog",))
    assert second.records() == [records[2]]
    write_negationclip_json(records, tmp_path / "n.json")
    assert detect_format(str(tmp_path / "n.json")) == "negationclip"
    assert [r.absence for r in read_rows(str(tmp_path / "n.json"))] == [("no dog",), ("no bird",)]
    (tmp_path / "bad.jsonl").write_text('{"image": "a.jpg"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 1: missing field"):
        list(read_rows(str(tmp_path / "bad.jsonl")))


def test_an_unknown_format_name_is_refused(tmp_path):
    path = write_negcap(tmp_path / "negcap.csv", [("a.jpg", "a cat", ["no dog"])])
    with pytest.raises(DataError, match="--train-format 'parquet': expected one of"):
        list(read_rows(str(path), fmt="parquet"))
