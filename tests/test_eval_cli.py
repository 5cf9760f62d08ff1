"""`negclip eval`: several models side by side, options, JSON/markdown/plot reports, text cache on disk,
model-card metadata, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import negation_plugins as npl
from negation_plugins.benchmarks.probe import negator_pairs
from negation_plugins.benchmarks.suite import parse_options, pick_eval_device
from negation_plugins.cli import cli
from negation_plugins.factory import Backend
from tests.test_benchmarks_common import text_only_finetune, tiny_clip, write_images


class TinyBackend(Backend):
    """Real tiny random CLIPs for the command line: ``tiny:SEED``."""

    name = "tiny-test"

    def can_load(self, spec):
        return spec.startswith("tiny:")

    def load(self, spec, *, device="cpu", **options):
        """``tiny:SEED``, or ``tiny:SEED:ft`` for its text-only fine-tune (same vision tower)."""
        _, seed, *tuned = spec.split(":")
        clip = text_only_finetune(tiny_clip(int(seed))) if tuned else tiny_clip(int(seed))
        clip.spec = spec
        return clip


class TinyPlugin:
    @npl.hookimpl
    def register_backends(self, register):
        register(TinyBackend())


@pytest.fixture
def valse(tmp_path):
    write_images(tmp_path / "imgs", [f"{i}.jpg" for i in range(4)])
    data = {
        str(i): {
            "image_file": f"{i}.jpg",
            "caption": f"a photo of {i} dogs",
            "foil": f"a photo with no dogs {i}",
            "mturk": {"foil": 0, "caption": 3, "other": 0},
        }
        for i in range(4)
    }
    (tmp_path / "existence.json").write_text(json.dumps(data))
    return tmp_path


def valse_options(folder):
    """The `-o` options pointing valse-existence at the fixture's file and images."""
    return [
        "-o",
        f"valse-existence.file={folder / 'existence.json'}",
        "-o",
        f"valse-existence.images={folder / 'imgs'}",
    ]


def run(args):
    return CliRunner().invoke(cli, ["eval", *args, "--quiet"], catch_exceptions=False)


def test_parse_options_json_values_and_all_benchmarks():
    got = parse_options(
        ["ccneg.eval_size=10", "ccneg.file=/x/y.pt", "skip=true", "negrefcocog.seed=[1]"], ["ccneg", "negrefcocog"]
    )
    assert got == {
        "ccneg": {"eval_size": 10, "file": "/x/y.pt", "skip": True},
        "negrefcocog": {"skip": True, "seed": [1]},
    }
    with pytest.raises(ValueError, match="not selected"):
        parse_options(["valse-existence.file=x"], ["ccneg"])


@pytest.mark.e2e
def test_two_models_side_by_side_with_reports_cache_and_model_card(valse, register_plugin, tmp_path):
    from negation_plugins.model_card import write_model_card

    register_plugin(TinyPlugin(), "tiny-plugin")
    card = write_model_card(tmp_path / "card", base_model="tiny:0", results_after={"negation-probe": {"x": 0.5}})
    args = [
        "tiny:0",
        "tiny:1",
        "--bench",
        "valse-existence,negation-probe",
        *valse_options(valse),
        "--out",
        str(tmp_path / "out"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--model-card",
        str(card),
    ]
    result = run(args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["models"] == ["tiny:0", "tiny:1"] and report["benchmarks"] == ["valse-existence", "negation-probe"]
    assert report["results"]["tiny:0"]["valse-existence"]["n_items"] == 4
    assert (
        report["results"]["tiny:0"]["negation-probe"]["cosine"]["mean"]
        != report["results"]["tiny:1"]["negation-probe"]["cosine"]["mean"]
    )
    probe_texts = len({t for pair in negator_pairs()[0] for t in pair})
    assert report["text_cache"] == {"hits": 0, "misses": 2 * (8 + probe_texts)}
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| benchmark | metric | tiny:0 | tiny:1 |" in table and "| valse-existence | accuracy |" in table
    assert (tmp_path / "out" / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    meta = yaml.safe_load(card.read_text().split("---")[1])
    metrics = {
        (r["dataset"]["type"], m["type"]): m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]
    }
    assert metrics[("valse-existence", "accuracy")] == pytest.approx(
        report["results"]["tiny:1"]["valse-existence"]["accuracy"]
    )
    assert ("negation-probe", "cosine.mean") not in metrics  # not a headline metric: the card's table has it
    assert "| negation-probe | cosine.mean |" in card.read_text()

    again = run(args[:-2] + ["--out", str(tmp_path / "out2"), "--no-plot"])  # a new cache object: read back from disk
    assert again.exit_code == 0, again.output
    report2 = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert report2["text_cache"] == {"hits": 2 * (8 + probe_texts), "misses": 0}
    assert report2["results"] == report["results"] and not (tmp_path / "out2" / "results.png").exists()


def test_clear_errors_for_bad_benchmarks_options_and_rows(valse, register_plugin, tmp_path):
    register_plugin(TinyPlugin(), "tiny-plugin")
    out = ["--out", str(tmp_path / "out")]
    result = run(["tiny:0", "--bench", "nope", *out])
    assert result.exit_code == 2 and "unknown benchmark(s) nope" in result.output and "valse-existence" in result.output
    result = run(["tiny:0", "--bench", "valse-existence", *out])
    assert result.exit_code == 2 and "--option valse-existence.file=VALUE" in result.output
    result = run(["tiny:0", "--bench", "valse-existence", "-o", "valse-existence.colour=red", *out])
    assert result.exit_code == 2 and "no option(s) colour" in result.output

    (valse / "imgs" / "2.jpg").unlink()
    bad = ["tiny:0", "--bench", "valse-existence", *valse_options(valse), "--no-plot", *out]
    result = run(bad)
    assert result.exit_code == 1 and "existence.json: row 2: image '2.jpg' not found" in result.output
    result = run(bad + ["--skip-bad"])
    assert result.exit_code == 0, result.output
    got = json.loads((tmp_path / "out" / "report.json").read_text())["results"]["tiny:0"]["valse-existence"]
    assert got["n_items"] == 3 and got["n_skipped"] == 1


def test_text_only_finetune_embeds_no_image_again(valse, register_plugin, tmp_path):
    """Images are cached on disk by vision tower: the second run, a text-only fine-tune, only embeds texts."""
    register_plugin(TinyPlugin(), "tiny-plugin")
    common = [
        "--bench",
        "valse-existence",
        *valse_options(valse),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-plot",
        "--workers",
        "0",
    ]
    base = run(["tiny:0", *common, "--out", str(tmp_path / "base")])
    assert base.exit_code == 0, base.output
    report = json.loads((tmp_path / "base" / "report.json").read_text())
    assert report["image_cache"] == {"hits": 0, "misses": 4} and report["text_cache"]["misses"] == 8
    device, precision = pick_eval_device(None, None)  # CUDA in bf16 when present, else the CPU in fp32
    assert report["settings"] == {"device": device, "precision": precision, "workers": 0, "batch_size": 64}

    tuned = run(["tiny:0:ft", *common, "--out", str(tmp_path / "tuned")])
    assert tuned.exit_code == 0, tuned.output
    report = json.loads((tmp_path / "tuned" / "report.json").read_text())
    assert report["image_cache"] == {"hits": 4, "misses": 0}  # every image served from the cache
    assert report["text_cache"] == {"hits": 0, "misses": 8}  # the text tower changed: texts embedded afresh

    other = run(["tiny:1", *common, "--out", str(tmp_path / "other"), "--precision", "bf16"])
    assert other.exit_code == 0, other.output
    report = json.loads((tmp_path / "other" / "report.json").read_text())
    assert report["image_cache"] == {"hits": 0, "misses": 4} and report["settings"]["precision"] == "bf16"


@pytest.mark.e2e
def test_world_model_on_mcq_retrieval_and_probe(world_coco, world_model, tmp_path):
    """The synthetic world end to end: the world's MCQ benchmark (another plugin) and this suite's in one run; the
    world's affirmative retrieval is `coco-retrieval` on its held-out files wherever it is reported."""
    from trainers.demo import evaluate_on_world

    result = run(
        [
            world_model,
            "--bench",
            "mcq,coco-retrieval,negation-probe",
            "-o",
            f"mcq.csv={world_coco.mcq_csv}",
            "-o",
            f"mcq.images={world_coco.images}",
            "-o",
            f"coco-retrieval.captions={world_coco.val_captions}",
            "-o",
            f"coco-retrieval.images={world_coco.images}",
            "--out",
            str(tmp_path / "out"),
            "--no-plot",
        ]
    )
    assert result.exit_code == 0, result.output
    got = json.loads((tmp_path / "out" / "report.json").read_text())["results"][world_model]
    assert set(got) == {"mcq", "coco-retrieval", "negation-probe"}
    assert (
        got["coco-retrieval"]["n_images"] > 0
        and 0 <= got["coco-retrieval"]["t2i_R@1"] <= got["coco-retrieval"]["t2i_R@10"] <= 1
    )
    assert got["coco-retrieval"]["t2i_R@10"] > 10 / got["coco-retrieval"]["n_images"]  # pretrained: better than chance
    assert "| mcq |" in (tmp_path / "out" / "results.md").read_text()

    pretrained = json.loads((Path(world_model[len("local-dir:") :]) / "pretrain_result.json").read_text())
    demo = evaluate_on_world(world_model, world_coco)
    assert got["coco-retrieval"]["n_images"] == pretrained["n_val_scenes"] == demo["retrieval"]["n_images"] == 160
    for key in ("i2t_R@1", "t2i_R@1"):  # one number in pretraining, the demo's results and negclip eval
        assert got["coco-retrieval"][key] == pretrained[key] == demo["retrieval"][key], key
    assert demo["mcq"] == got["mcq"]


def mcq_captions(i):
    return [f"a photo of {i} dogs", f"no dogs {i}", "a cat but no dog", "a cat"]  # rows share some, as NegBench's do


def write_mcq(folder):
    """A NegBench MCQ CSV over four real images."""
    write_images(folder / "imgs", [f"{i}.png" for i in range(4)])
    lines = ["image_path,correct_answer,caption_0,caption_1,caption_2,caption_3,correct_answer_template"]
    for i, template in enumerate(["positive", "negative", "hybrid", "negative"]):
        lines.append(",".join([f"{i}.png", str(i % 4), *mcq_captions(i), template]))
    (folder / "mcq.csv").write_text("\n".join(lines) + "\n")
    return folder / "mcq.csv"


def test_mcq_takes_skip_bad_and_the_text_cache(tmp_path, register_plugin):
    register_plugin(TinyPlugin(), "tiny-plugin")
    csv_path = write_mcq(tmp_path)
    n_texts = len({c for i in (0, 1, 3) for c in mcq_captions(i)})  # row 3 (image 2) is skipped: 8 distinct
    (tmp_path / "imgs" / "2.png").unlink()
    args = ["tiny:0", "--bench", "mcq", "-o", f"mcq.csv={csv_path}", "-o", f"mcq.images={tmp_path / 'imgs'}"]
    args += ["--no-plot", "--cache-dir", str(tmp_path / "cache")]
    result = run(args + ["--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "mcq.csv: row 3: image '2.png' not found" in result.output

    result = run(args + ["--skip-bad", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    got = report["results"]["tiny:0"]["mcq"]
    assert got["n_skipped"] == 1 and got["n_items"] == 3 and "row 3" in got["skipped"][0]
    assert report["text_cache"] == {"hits": 0, "misses": n_texts} and n_texts == 8

    again = run(args + ["--skip-bad", "--batch-size", "3", "--out", str(tmp_path / "out2")])
    assert again.exit_code == 0, again.output
    report2 = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert report2["text_cache"] == {"hits": n_texts, "misses": 0}
    assert report2["results"]["tiny:0"]["mcq"]["accuracy"] == got["accuracy"]
