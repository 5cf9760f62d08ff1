"""`negclip app` without a browser: the page's functions give `negclip compare`'s numbers, refuse what they must,
generate stock vs negation-aware with one seed, and export a Space that `negclip push` uploads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from negation_plugins.app import core
from negation_plugins.app.core import AppError, Models
from negation_plugins.cli import cli
from negation_plugins.testing import tiny_model_dir
from negation_plugins.world.shipped import FOLDER

BASE = f"local-dir:{FOLDER}"


@pytest.fixture(scope="module")
def second(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("second") / "model", seed=1)


@pytest.fixture(scope="module")
def models(second):
    return Models([BASE, second])


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return core.world_examples(1, tmp_path_factory.mktemp("examples"))[0]


def cli_json(*arguments) -> dict:
    result = CliRunner().invoke(cli, ["compare", *arguments, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_parse_captions_one_per_line():
    assert core.parse_captions("a dog.\n\n  a dog with no ball. \n") == ["a dog.", "a dog with no ball."]
    with pytest.raises(AppError, match="at least 2 captions"):
        core.parse_captions("only one\n   \n")


@pytest.mark.parametrize("corrections", [(), ("span-subtraction",)])
def test_compare_image_equals_negclip_compare_json(models, second, example, corrections):
    captions = "\n".join(example.captions)
    result = core.compare_image(models, [BASE, second], str(example.image), captions, corrections)
    texts = [flag for caption in example.captions for flag in ("--text", caption)]
    fixes = [flag for spec in corrections for flag in ("--correction", spec)]
    expected = cli_json(BASE, second, "--image", str(example.image), *texts, *fixes)
    expected.pop("image")
    assert [row["model"] for row in result["models"]] == [row["model"] for row in expected["models"]]
    assert len(result["models"]) == 2 * (1 + bool(corrections))
    for got, want in zip(result["models"], expected["models"]):
        assert got["argmax"] == want["argmax"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
        assert got["cosines"] == pytest.approx(want["cosines"], abs=1e-6)


def test_probe_equals_negclip_compare_without_image(models, second, example):
    texts, built_in = core.probe(models, [BASE, second], "\n".join(example.captions))
    flags = [flag for caption in example.captions for flag in ("--text", caption)]
    for got, want in zip(texts["models"], cli_json(BASE, second, *flags)["models"], strict=True):
        assert got["model"] == want["model"]
        assert got["cosines"] == pytest.approx(want["cosines"], abs=1e-6)
    expected = cli_json(BASE, second)
    for got, want in zip(built_in["models"], expected["models"], strict=True):
        assert got["probe"]["cosine"]["mean"] == pytest.approx(want["probe"]["cosine"]["mean"], abs=1e-6)
    html = core.text_table_html(texts) + core.probe_table_html(built_in)
    assert 'id="caption-table"' in html and 'id="probe-table"' in html


def test_models_load_once_and_fail_in_one_line(models):
    assert models.get(BASE) is models.get(BASE)
    messages = []
    bad = Models(["nosuch-org/nosuch-model"])
    with pytest.raises(AppError) as error:
        bad.get("nosuch-org/nosuch-model", messages.append)
    assert "\n" not in str(error.value) and str(error.value).startswith("nosuch-org/nosuch-model:")
    assert messages == ["loading nosuch-org/nosuch-model (first use; kept for the next requests)"]
    with pytest.raises(AppError, match="not one of this page's models"):
        models.get("ViT-B-32:openai")


def test_check_model_name_refuses_what_no_backend_reads(tmp_path):
    core.check_model_name(BASE)
    core.check_model_name("some-org/some-model")  # a Hub name: looked up when first used
    with pytest.raises(AppError, match="no backend reads it"):
        core.check_model_name("no-such-model")
    with pytest.raises(AppError, match="not an open_clip folder"):
        core.check_model_name(f"local-dir:{tmp_path}")


def test_only_uploaded_files_are_read(tmp_path, monkeypatch, example):
    uploads = tmp_path / "gradio"
    uploads.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    outside = tmp_path / "secret.png"
    outside.write_bytes(example.image.read_bytes())
    (uploads / "escape.png").symlink_to(outside)
    for path in (outside, uploads / "escape.png", uploads / ".." / "secret.png", Path("/etc/passwd")):
        with pytest.raises(AppError, match="not an uploaded file"):
            core.read_upload(str(path))
    (uploads / "ok.png").write_bytes(example.image.read_bytes())
    assert core.read_upload(str(uploads / "ok.png")).size == (32, 32)
    (uploads / "broken.png").write_bytes(b"not an image")
    with pytest.raises(AppError, match="broken.png: not a readable image"):
        core.read_upload(str(uploads / "broken.png"))
    with pytest.raises(AppError, match="upload an image"):
        core.read_upload(None)


def test_table_marks_each_pick_once_and_escapes_captions(models, second, example):
    captions = [*example.captions, "<b>bold</b> & co"]
    result = core.compare_image(models, [BASE, second], str(example.image), "\n".join(captions))
    html = core.image_table_html(result)
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt; &amp; co" in html
    for m, row in enumerate(result["models"]):
        cells = re.findall(rf'<td class="prob( pick)?" data-model="{m}" data-value="([^"]+)">([^<]+)</td>', html)
        assert [float(value) for _, value, _ in cells] == row["probabilities"]
        assert [t for t, (pick, _, text) in enumerate(cells) if pick and text.endswith(core.PICK_MARK)] == [
            row["argmax"]
        ]


def test_bar_chart_has_a_bar_per_model_and_caption(models, second, example):
    result = core.compare_image(models, [BASE, second], str(example.image), "\n".join(example.captions))
    figure = core.bar_chart(result)
    bars = [patch for patch in figure.axes[0].patches]
    assert len(bars) == 2 * len(example.captions)
    widths = [bar.get_width() for bar in bars]
    assert widths == pytest.approx([p for row in result["models"] for p in row["probabilities"]])


def test_world_examples_are_held_out_scenes_with_three_captions(tmp_path):
    from negation_plugins.world import WorldConfig, generate_scenes

    examples = core.world_examples(3, tmp_path)
    config = WorldConfig()
    held_out = {s.id: s for s in generate_scenes(config.n_images, config.seed)[-round(config.n_images * 0.1) :]}
    for example in examples:
        scene = held_out[int(example.image.stem.split("-")[1])]
        caption, negation, wrong = example.captions
        assert "no" not in caption.split()
        assert negation.endswith(f"but no {scene.absent[0]}.")
        assert wrong.endswith(f"but no {scene.objects[-1].category}.")


def test_default_models_use_the_demo_model_when_written(tmp_path):
    names, note = core.default_models(tmp_path / "negclip-demo" / "model")
    assert names == [BASE] and "negclip demo" in note
    model = tmp_path / "negclip-demo" / "model"
    model.mkdir(parents=True)
    (model / "open_clip_config.json").write_text("{}")
    names, note = core.default_models(model)
    assert names == [BASE, f"local-dir:{model.resolve()}"]


def test_equivalent_command_quotes_captions():
    command = core.equivalent_command(["m1", "m 2"], "a dog.\nno dog's ball.", ["span-subtraction"])
    assert command == (
        "negclip compare m1 'm 2' --image IMAGE --text a.dog. --text 'no dog'\"'\"'s ball.' "
        "--correction span-subtraction --json"
    ).replace("a.dog.", "'a dog.'")


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    from tests.test_app_browser import world_pipeline

    return world_pipeline(tmp_path_factory.mktemp("pipeline") / "pipe")


def test_generate_pair_same_seed_stock_then_swapped(pipeline_dir, models):
    import numpy as np
    import torch

    generator = core.Generator(pipeline_dir)
    encoder = models.get(BASE)
    done = []
    stock, aware, used = generator.pair(
        "a red circle and no star", encoder, seed=3, steps=2, step_done=lambda d, t: done.append((d, t))
    )
    assert done == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert used == {"prompt": "a red circle and no star", "negative_prompt": None}
    pipe = generator.pipeline()
    assert not getattr(pipe, "stock_text_encoders", {})  # the stock encoder is back
    again = pipe("a red circle and no star", num_inference_steps=2, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(stock))
    assert stock.size == aware.size and not np.array_equal(np.asarray(stock), np.asarray(aware))

    _, _, routed = generator.pair("a red circle without a star", encoder, steps=1, route=True)
    assert routed == {"prompt": "a red circle", "negative_prompt": "a star"}


def test_generate_cancel_stops_and_restores(pipeline_dir, models):
    generator = core.Generator(pipeline_dir)
    with pytest.raises(core.Cancelled):
        generator.pair("a star", models.get(BASE), steps=3, cancelled=lambda: True)
    with pytest.raises(AppError, match="type a prompt"):
        generator.pair("  ", models.get(BASE))
    assert not getattr(generator.pipeline(), "stock_text_encoders", {})


def test_generate_refuses_an_encoder_that_does_not_fit(pipeline_dir, models, second):
    generator = core.Generator(pipeline_dir)
    with pytest.raises(AppError, match="cannot put"):
        generator.pair("a star", models.get(second), steps=1)
    assert not getattr(generator.pipeline(), "stock_text_encoders", {})


def test_command_line_errors_are_one_line():
    for arguments, expected in (
        (["--model", "no-such-model"], "Error: --model no-such-model: no backend reads it"),
        (["--model", BASE, "--correction", "nosuch"], "Error: --correction: no correction named 'nosuch'"),
        (["--export-space", "out"], "Error: --export-space needs at least one --model"),
    ):
        result = CliRunner().invoke(cli, ["app", *arguments])
        assert result.exit_code == 1
        assert result.output.startswith(expected) and result.output.count("\n") == 1, result.output


def test_safe_launch_defaults(monkeypatch):
    """What `negclip app` asks Gradio for (the browser test checks what the server then does)."""
    import gradio

    launched = {}
    monkeypatch.setattr(gradio.Blocks, "launch", lambda self, **options: launched.update(options))
    result = CliRunner().invoke(cli, ["app", "--model", BASE])
    assert result.exit_code == 0, result.output
    assert launched["server_name"] == "127.0.0.1" and launched["share"] is False
    assert launched["max_file_size"] == "10mb" and launched["ssr_mode"] is False
    assert "allowed_paths" not in launched


def test_export_space_and_push_it(tmp_path, second, monkeypatch):
    from huggingface_hub import constants

    from tests.hub_server import HubServer
    from tests.test_hub import TOKEN

    out = tmp_path / "space"
    result = CliRunner().invoke(cli, ["app", "--export-space", str(out), "--model", BASE, "--model", second])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "app.py", "models", "requirements.txt"]
    front = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    assert (out / "requirements.txt").read_text().startswith("negation-plugins[app]==")
    copied = sorted(p.name for p in (out / "models").iterdir())
    assert copied == ["1-base_model", "2-model"]
    assert (out / "models" / "2-model" / "open_clip_config.json").is_file()

    namespace = {"__file__": str(out / "app.py"), "__name__": "space_app"}
    exec(compile((out / "app.py").read_text(), str(out / "app.py"), "exec"), namespace)
    assert namespace["here"]("local-dir:./models/2-model") == f"local-dir:{out.resolve()}/models/2-model"
    assert type(namespace["page"]).__name__ == "Blocks"

    again = CliRunner().invoke(cli, ["app", "--export-space", str(out), "--model", BASE])
    assert again.exit_code == 1 and "already exists" in again.output

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with HubServer(TOKEN) as hub:
        pushed = CliRunner().invoke(
            cli,
            ["push", str(out), "tester/does-it-get-no", "--repo-type", "space"]
            + ["--endpoint", hub.endpoint, "--token", TOKEN],
        )
        assert pushed.exit_code == 0, pushed.output
        assert f"{hub.endpoint}/spaces/tester/does-it-get-no/commit/" in pushed.output
        files = hub.state.repos["spaces/tester/does-it-get-no"].files
        assert "tester/does-it-get-no" not in hub.state.repos  # a Space, not a model
    local = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert files == local
