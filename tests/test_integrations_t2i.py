"""Neg-T2I evaluation: prompts, judges (CLIP presence, OWL-ViT), stock vs swapped report + grids, the CLI."""

import json

import open_clip
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from integrations.neg_t2i import (
    ClipPresenceJudge,
    NegatedPrompt,
    OwlVitJudge,
    evaluate,
    read_prompts,
)
from negation_plugins.benchmarks.suite import PRECISIONS, pick_eval_device
from negation_plugins.testing import tiny_clip, tiny_sd_pipeline


def judge_bundle():
    bundle = tiny_clip(32, seed=7)
    bundle.preprocess = open_clip.image_transform(32, is_train=False)
    return bundle


def test_read_prompts_text_and_jsonl(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("# comment\na street without cars\n\nno dogs on the beach\n")
    assert read_prompts(text) == [
        NegatedPrompt("a street without cars", ["cars"]),
        NegatedPrompt("no dogs on the beach", ["dogs"]),
    ]
    records = tmp_path / "prompts.jsonl"
    records.write_text(
        json.dumps({"prompt": "an empty road", "objects": ["car"]})
        + "\n"
        + json.dumps({"prompt": "a room without chairs"})
        + "\n"
    )
    assert read_prompts(records) == [
        NegatedPrompt("an empty road", ["car"]),
        NegatedPrompt("a room without chairs", ["chairs"]),
    ]
    records.write_text('{"prompt": "ok without x"}\n{broken\n')
    with pytest.raises(ValueError, match=r"prompts.jsonl:2: invalid JSON"):
        read_prompts(records)
    text.write_text("a red bus\n")
    with pytest.raises(ValueError, match=r"prompts.txt:1: no negated object in 'a red bus'"):
        read_prompts(text)


def test_evaluate_stock_vs_negation_writes_report_and_grids(tmp_path):
    pipe = tiny_sd_pipeline()
    stock = pipe.text_encoder
    prompts = [NegatedPrompt("a street without cars", ["cars"]), NegatedPrompt("a dog, not a cat", ["cat"])]
    report = evaluate(
        pipe,
        prompts,
        tiny_clip(64),
        ClipPresenceJudge(judge_bundle()),
        steps=2,
        size=32,
        images_per_prompt=2,
        out_dir=tmp_path,
    )
    assert pipe.text_encoder is stock  # restored afterwards
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["summary"] == report["summary"] and set(saved["summary"]) == {"stock", "negation"}
    for row in saved["prompts"]:
        for variant in ("stock", "negation"):
            scores = row[variant]["presence"][row["objects"][0]]
            assert len(scores) == 2 and all(0 <= s <= 1 for s in scores)
            assert row[variant]["absent"] == [s < 0.5 for s in scores]
    stock_images, negation_images = (Image.open(tmp_path / f"grid_{v}.png") for v in ("stock", "negation"))
    assert stock_images.size == (64, 64)  # 2 prompts x 2 images of 32 px
    assert list(stock_images.getdata()) != list(negation_images.getdata())  # the encoder changed the images


def test_owlvit_judge_scores_presence():
    from negation_plugins.testing import tiny_owlvit

    model, processor = tiny_owlvit()
    judge = OwlVitJudge(model, processor)
    images = [Image.new("RGB", (40, 40), color) for color in ("red", "blue")]
    scores = judge.presence(images, "car")
    assert len(scores) == 2 and all(0 <= s <= 1 for s in scores)
    for image, score in zip(images, scores):  # the best box's score for the one query
        inputs = processor(text=[["a photo of a car"]], images=[image], padding="max_length", return_tensors="pt")
        with torch.no_grad():
            logits = judge.model(**inputs).logits
        assert score == pytest.approx(float(logits.sigmoid().max()), abs=1e-6)


def test_t2i_eval_cli(tmp_path):
    from negation_plugins.cli import cli
    from negation_plugins.convert import save_open_clip

    tiny_sd_pipeline().save_pretrained(tmp_path / "pipe")
    save_open_clip(tiny_clip(64, seed=2), tmp_path / "encoder")
    save_open_clip(judge_bundle(), tmp_path / "judge")
    (tmp_path / "prompts.txt").write_text("a street without cars\n")
    result = CliRunner().invoke(
        cli,
        [
            "t2i-eval",
            str(tmp_path / "pipe"),
            "--encoder",
            f"local-dir:{tmp_path / 'encoder'}",
            "--prompts",
            str(tmp_path / "prompts.txt"),
            "--judge",
            f"clip:local-dir:{tmp_path / 'judge'}",
            "--out",
            str(tmp_path / "out"),
            "--steps",
            "2",
            "--size",
            "32",
            "--route-negations",
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "negation success" in result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["settings"]["route_negations"] is True and report["prompts"][0]["objects"] == ["cars"]
    device, precision = pick_eval_device(None, None)  # CUDA in bf16 when present, else the CPU in fp32
    assert (report["settings"]["device"], report["settings"]["dtype"]) == (device, PRECISIONS[precision])
    assert (tmp_path / "out" / "grid_negation.png").is_file()
