"""Every reader of users' text files accepts what Excel and Windows tools write: a UTF-8 byte-order mark, CRLF line
endings (and UTF-16 with its mark); each gives the same result as the plain UTF-8/LF file."""

from __future__ import annotations

import codecs
import json

import pytest
from PIL import Image

from integrations.neg_t2i import read_prompts
from negation_plugins.backends.transformers_folder import _model_type
from negation_plugins.benchmarks.common import read_coco_pairs, read_json_items
from negation_plugins.benchmarks.mcq import read_mcq_csv
from negation_plugins.benchmarks.negbench import read_retrieval_csv
from negation_plugins.benchmarks.probe import read_pairs
from negation_plugins.benchmarks.retention import parse_templates, read_class_names
from negation_plugins.data.io import read_caption_table, read_coco_captions, read_negation_records
from negation_plugins.textfiles import read_text
from trainers.batches import _is_coco_without_negations
from trainers.config import load_yaml

RECORD = {"image": "a.png", "caption": "a café with a dog", "negated_caption": "a café with no dog", "kind": "absence"}
COCO = {
    "images": [{"id": 1, "file_name": "a.png"}],
    "annotations": [{"id": 7, "image_id": 1, "caption": "a café with a dog"}],
}
MCQ = (
    "image_path,correct_answer,caption_0,caption_1,caption_2,caption_3,correct_answer_template\n"
    'a.png,1,"a dog, no café",a café with a dog,a cat,no dog,positive\n'
)

# name -> (file name, plain UTF-8/LF text, reader called on the path)
READERS = {
    "records jsonl": ("r.jsonl", json.dumps(RECORD) + "\n" + json.dumps(RECORD) + "\n", read_negation_records),
    "records as .json": ("r.json", json.dumps(RECORD) + "\n", read_negation_records),
    "negationclip json": (
        "n.json",
        json.dumps({**COCO, "annotations": [{**COCO["annotations"][0], "updated_caption": "a café, no dog"}]}),
        read_negation_records,
    ),
    "caption csv": ("c.csv", "image,caption,objects\na.png,a café with a dog,dog;café\n", read_caption_table),
    "caption jsonl": ("c.jsonl", json.dumps({"image": "a.png", "caption": "a café"}) + "\n", read_caption_table),
    "coco captions": ("coco.json", json.dumps(COCO, indent=1), read_coco_captions),
    "mcq csv": ("mcq.csv", MCQ, read_mcq_csv),
    "negbench retrieval csv": (
        "ret.csv",
        "filepath,captions\na.png,\"['a café', 'a dog']\"\n",
        lambda p: read_retrieval_csv(p, images=p.parent)[0],
    ),
    "coco pairs": ("pairs.json", json.dumps(COCO, indent=1), lambda p: read_coco_pairs(p, images=p.parent)[0]),
    "benchmark json items": (
        "items.json",
        json.dumps([{"q": "café"}], indent=1),
        lambda p: read_json_items(p, list, "")[0],
    ),
    "templates": ("t.txt", "a photo of {}.\na café with {}.\n", lambda p: parse_templates(str(p))),
    "class names": ("names.tsv", "n01\tcafé\nn02\tdog\n", lambda p: read_class_names(p, ["n01", "n02"])),
    "probe pairs tsv": ("p.tsv", "a café\tno café\n", lambda p: read_pairs(p)[0]),
    "probe pairs jsonl": ("p.jsonl", json.dumps(RECORD) + "\n", lambda p: read_pairs(p)[0]),
    "t2i prompts txt": ("prompts.txt", "# comment\na street without cars\n", read_prompts),
    "t2i prompts jsonl": ("prompts.jsonl", json.dumps({"prompt": "a café without cars"}) + "\n", read_prompts),
    "trainer yaml": ("c.yaml", "lr: 0.001\nmodel: café\n", load_yaml),
    "coco sniff (trainer)": ("coco.json", json.dumps(COCO, indent=1), _is_coco_without_negations),
    "hf config.json": (
        "config.json",
        json.dumps({"model_type": "clip", "name": "café"}, indent=1),
        lambda p: _model_type(p.parent),
    ),
}

VARIANTS = {
    "utf-8 BOM": lambda text: codecs.BOM_UTF8 + text.encode("utf-8"),
    "CRLF": lambda text: text.replace("\n", "\r\n").encode("utf-8"),
    "BOM + CRLF": lambda text: codecs.BOM_UTF8 + text.replace("\n", "\r\n").encode("utf-8"),
    "utf-16 (Excel unicode text)": lambda text: text.replace("\n", "\r\n").encode("utf-16"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("reader", list(READERS))
def test_reader_reads_bom_and_crlf_files_like_plain_ones(tmp_path, reader, variant):
    name, text, read = READERS[reader]
    plain, odd = tmp_path / "plain", tmp_path / "odd"
    plain.mkdir(), odd.mkdir()
    for folder in (plain, odd):
        Image.new("RGB", (4, 4)).save(folder / "a.png")
    (plain / name).write_bytes(text.encode("utf-8"))
    (odd / name).write_bytes(VARIANTS[variant](text))
    expected = read(plain / name)
    assert expected  # the plain file reads to something, so the comparison below means something
    got = read(odd / name)
    assert repr(got).replace(str(odd), str(plain)) == repr(expected)


def test_read_text_drops_the_mark_and_normalises_line_ends(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(codecs.BOM_UTF8 + b"one\r\ntwo\rthree\n")
    assert read_text(path) == "one\ntwo\nthree\n"


def test_generate_reads_a_bom_crlf_vocabulary_like_a_plain_one(tmp_path):
    from click.testing import CliRunner

    from negation_plugins.cli import cli
    from tests.test_data_io import _coco

    captions, _, images = _coco(tmp_path)
    outputs = []
    for name, data in (("plain.txt", b"dog\ncouch\ncat\n"), ("odd.txt", codecs.BOM_UTF8 + b"dog\r\ncouch\r\ncat\r\n")):
        (tmp_path / name).write_bytes(data)
        out = tmp_path / f"{name}.jsonl"
        args = ["generate", "--no-progress", "--captions", str(captions), "--images", str(images)]
        result = CliRunner().invoke(cli, [*args, "--vocabulary", str(tmp_path / name), "--out", str(out)])
        assert result.exit_code == 0, result.output
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1] and "dog" in outputs[0]
