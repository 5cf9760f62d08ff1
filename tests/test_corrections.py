"""Training-free corrections: their arithmetic on hand-made embeddings, steering files, plugins, load_clip."""

from __future__ import annotations

import pytest
import torch

from negation_plugins import corrections as corr
from negation_plugins.factory import load_clip
from negation_plugins.plugins import get
from negation_plugins.testing import tiny_clip


class TableClip:
    """A stand-in text encoder with chosen unit embeddings, so the expected arithmetic can be written by hand."""

    def __init__(self, table: dict[str, list[float]]):
        self.table = {t: torch.tensor(v) / torch.tensor(v).norm() for t, v in table.items()}
        self.model = object()
        self.corrections = []

    def encode_text(self, texts, corrected=True):
        return torch.stack([self.table[t] for t in texts])


def test_span_subtraction_removes_the_negated_phrase_component():
    table = {
        "a box without a star": [1.0, 1.0, 0.0],
        "a star": [0.0, 1.0, 0.0],
        "a box": [1.0, 0.0, 0.0],
        **{w: [0.0, 0.0, 1.0] for w in corr.NEUTRAL_WORDS},
    }
    clip = TableClip(table)
    texts = ["a box without a star", "a box"]
    e = clip.encode_text(texts)
    out = corr.SpanSubtraction(scale=1.0).correct(clip, texts, e)
    # e = (1,1,0)/sqrt2; proj on star (0,1,0) = (0,1/sqrt2,0); anchor a = (0,0,1): e - (proj - a) = (1/sqrt2, 0, 1)
    expected = torch.tensor([2**-0.5, 0.0, 1.0])
    assert torch.allclose(out[0], expected / expected.norm(), atol=1e-6)
    assert torch.equal(out[1], e[1])  # no negation: untouched


def test_span_subtraction_scale_and_untouched_affirmative_batch():
    table = {"no star here": [0.6, 0.8], "star here": [0.0, 1.0], **{w: [1.0, 0.0] for w in corr.NEUTRAL_WORDS}}
    clip = TableClip(table)
    e = clip.encode_text(["no star here"])
    # the phrase the rules find is "star here" (no punctuation or connective ends it)
    out = corr.SpanSubtraction(scale=0.5).correct(clip, ["no star here"], e)
    manual = e[0] - 0.5 * ((e[0] @ torch.tensor([0.0, 1.0])) * torch.tensor([0.0, 1.0]) - torch.tensor([1.0, 0.0]))
    assert torch.allclose(out[0], manual / manual.norm(), atol=1e-6)
    affirmative = clip.encode_text(["star here"])
    assert torch.equal(corr.SpanSubtraction().correct(clip, ["star here"], affirmative), affirmative)


def test_steering_fit_is_the_unit_mean_difference_and_round_trips(tmp_path):
    table = {"a cat": [1.0, 0.0, 0.0], "no cat": [0.0, 1.0, 0.0], "a dog": [1.0, 0.0, 0.0], "no dog": [0.0, 0.0, 1.0]}
    clip = TableClip(table)
    clip.model = torch.nn.Linear(2, 2)  # fingerprinted by text_model_key
    direction, meta = corr.fit_steering(clip, [("a cat", "no cat"), ("a dog", "no dog")], scale=0.5)
    expected = torch.tensor([-1.0, 0.5, 0.5])
    assert torch.allclose(direction, expected / expected.norm(), atol=1e-6)
    assert meta["pairs"] == 2 and meta["scale"] == 0.5

    path = corr.save_steering(tmp_path / "steer.safetensors", direction, meta)
    steering = corr.parse_correction(f"steering:{path}")
    assert torch.equal(steering.direction, direction) and steering.scale == 0.5
    assert corr.parse_correction(f"steering:{path}:scale=2").scale == 2.0

    texts = ["a cat", "no cat"]
    out = steering.correct(clip, texts, clip.encode_text(texts))
    assert torch.equal(out[0], clip.table["a cat"])
    moved = clip.table["no cat"] + 0.5 * direction
    assert torch.allclose(out[1], moved / moved.norm(), atol=1e-6)


def test_steering_refuses_a_file_for_another_width(tmp_path):
    path = corr.save_steering(tmp_path / "s.safetensors", torch.ones(5) / 5**0.5, {"scale": 1.0, "model": "x"})
    clip = TableClip({"no cat": [1.0, 0.0]})
    with pytest.raises(corr.CorrectionError, match="5-d.*2-d"):
        corr.parse_correction(f"steering:{path}").correct(clip, ["no cat"], clip.encode_text(["no cat"]))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nonsense", "no correction named 'nonsense'"),
        ("steering", "steering needs a file"),
        ("steering:/no/such/file.safetensors", "steering file not found"),
        ("span-subtraction:scale=big", "scale must be a number"),
        ("span-subtraction:color=red", "unexpected keyword"),
    ],
)
def test_bad_correction_specs_fail_in_one_line(spec, message):
    with pytest.raises(corr.CorrectionError, match=message) as err:
        corr.parse_correction(spec)
    assert "\n" not in str(err.value)


def test_a_file_that_is_not_a_steering_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(corr.CorrectionError, match="not a steering file"):
        corr.parse_correction(f"steering:{bad}")


def test_corrections_register_and_unregister_as_plugins(register_plugin):
    assert {"span-subtraction", "steering"} <= set(get("corrections"))

    class Flip(corr.Correction):
        name = "flip"

        def correct(self, clip, texts, embeddings):
            return -embeddings

    class Plugin:
        @staticmethod
        @corr.hookimpl
        def register_corrections(register):
            register(Flip)

    register_plugin(Plugin, "flip-plugin")
    assert isinstance(corr.parse_correction("flip"), Flip)
    from negation_plugins.plugins import pm

    pm.unregister(name="flip-plugin")
    with pytest.raises(corr.CorrectionError, match="no correction named 'flip'"):
        corr.parse_correction("flip")
    pm.register(Plugin, name="flip-plugin")  # the fixture unregisters it again


def test_load_clip_stacks_corrections_only_on_negated_captions(tmp_path):
    from negation_plugins.convert import save_open_clip

    bundle = tiny_clip()
    folder = save_open_clip(bundle, tmp_path / "tiny")
    plain = load_clip(f"local-dir:{folder}")
    corrected = load_clip(f"local-dir:{folder}", correction=["span-subtraction"])
    texts = ["a street with cars", "a street without cars"]
    a, b = plain.encode_text(texts), corrected.encode_text(texts)
    assert torch.allclose(a[0], b[0], atol=1e-6)
    assert not torch.allclose(a[1], b[1], atol=1e-3)
    assert torch.allclose(b.norm(dim=-1), torch.ones(2), atol=1e-5)
    unnormalized = corrected.encode_text(texts, normalize=False)
    assert torch.allclose(unnormalized.norm(dim=-1), plain.encode_text(texts, normalize=False).norm(dim=-1))


def test_integrations_refuse_a_corrected_model_instead_of_dropping_the_correction():
    from integrations.text_encoders import IncompatibleEncoderError, load_source

    bundle = tiny_clip()
    bundle.corrections = corr.parse_corrections("span-subtraction")
    with pytest.raises(IncompatibleEncoderError, match="per-token hidden states"):
        load_source(bundle)


def test_fit_command_writes_a_steering_file_that_load_clip_uses(tmp_path):
    from click.testing import CliRunner

    from negation_plugins.cli import cli
    from negation_plugins.convert import save_open_clip

    folder = save_open_clip(tiny_clip(), tmp_path / "tiny")
    out = tmp_path / "steer.safetensors"
    result = CliRunner().invoke(
        cli, ["corrections", "fit", f"local-dir:{folder}", "--out", str(out), "--n-captions", "20"]
    )
    assert result.exit_code == 0, result.output
    assert "pairs" in result.output and out.is_file()
    corrected = load_clip(f"local-dir:{folder}", correction=f"steering:{out}")
    plain = load_clip(f"local-dir:{folder}")
    texts = ["a dog on the grass", "a dog but no cat on the grass"]
    a, b = plain.encode_text(texts), corrected.encode_text(texts)
    assert torch.allclose(a[0], b[0], atol=1e-6) and not torch.allclose(a[1], b[1], atol=1e-4)


def test_eval_scores_each_model_as_is_and_corrected(tmp_path):
    import json

    from click.testing import CliRunner

    from negation_plugins.cli import cli
    from negation_plugins.convert import save_open_clip

    folder = save_open_clip(tiny_clip(), tmp_path / "tiny")
    args = ["eval", f"local-dir:{folder}", "--bench", "negation-probe", "-o", "n_captions=10", "--no-plot", "--quiet"]
    args += ["--correction", "span-subtraction:scale=1", "--cache-dir", str(tmp_path / "cache")]
    for run in ("first", "second"):
        result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / run)])
        assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "second" / "report.json").read_text())
    plain, corrected = report["models"]
    assert corrected == f"{plain} + span-subtraction:scale=1"
    means = [report["results"][m]["negation-probe"]["cosine"]["mean"] for m in (plain, corrected)]
    assert means[0] != pytest.approx(means[1], abs=1e-4)  # the cache keeps corrected and plain embeddings apart
    assert report["text_cache"]["misses"] == 0


def test_eval_refuses_a_bad_correction_before_loading_a_model(tmp_path):
    from click.testing import CliRunner

    from negation_plugins.cli import cli

    args = ["eval", "local-dir:/does/not/exist", "--bench", "negation-probe", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(cli, [*args, "--correction", "steering:/no/file.safetensors"])
    assert result.exit_code == 2 and "steering file not found" in result.output
    assert not (tmp_path / "o").exists()


def test_compare_shows_each_model_with_and_without_the_correction(tmp_path):
    import json

    from click.testing import CliRunner

    from negation_plugins.cli import cli
    from negation_plugins.convert import save_open_clip

    folder = save_open_clip(tiny_clip(), tmp_path / "tiny")
    args = ["compare", f"local-dir:{folder}", "--text", "a street with cars", "--text", "a street without cars"]
    result = CliRunner().invoke(cli, [*args, "--correction", "span-subtraction", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert f"local-dir:{folder} + span-subtraction:scale=1.9" in json.dumps(shown)
    bad = CliRunner().invoke(cli, [*args, "--correction", "nope"])
    assert bad.exit_code == 1 and "no correction named 'nope'" in bad.output
