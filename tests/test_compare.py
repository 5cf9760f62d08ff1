"""`negclip compare`: the user's image and captions through several models side by side, local and Hub names."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import negation_plugins as npl
from negation_plugins.cli import cli
from tests.hub_server import HubServer, download_hub
from tests.test_backends import openai_state_dict
from tests.test_hub_names import folder_files, torch_bytes

REPO_ROOT = Path(__file__).resolve().parents[1]


def compare(*args):
    return CliRunner().invoke(cli, ["compare", *args])


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with download_hub(monkeypatch, tmp_path / "hf_home") as server:
        yield server


@pytest.fixture(scope="module")
def val_scene(world_coco):
    """A held-out world image, its caption, and that caption with its first object negated."""
    captions = json.loads(world_coco.val_captions.read_text())
    annotation = captions["annotations"][0]
    image = next(i for i in captions["images"] if i["id"] == annotation["image_id"])
    return world_coco.images / image["file_name"], annotation["caption"]


def test_image_table_and_json_match_the_models(world_model, val_scene, hub, tmp_path):
    """The base world model, by its local folder and by a Hub name of the same files: same numbers, and they are
    the model's own zero-shot probabilities and cosines."""
    from PIL import Image

    from negation_plugins.convert import save_open_clip

    image, caption = val_scene
    texts = [caption, f"a photo with no {caption.split()[-1].rstrip('.')}", "an empty gray picture"]
    base = npl.load_clip(world_model)
    hub.state.publish("world/base", folder_files(save_open_clip(base, tmp_path / "base")))
    args = [world_model, "hf-hub:world/base", "--image", str(image), *[a for t in texts for a in ("--text", t)]]

    result = compare(*args, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["texts"] == texts and report["image"] == str(image)
    assert [row["model"] for row in report["models"]] == [world_model, "hf-hub:world/base"]
    with torch.no_grad():
        cosines = (base.encode_image([Image.open(image).convert("RGB")]) @ base.encode_text(texts).T)[0]
    probabilities = (base.logit_scale * cosines).softmax(0)
    for row in report["models"]:
        assert torch.allclose(torch.tensor(row["cosines"]), cosines, atol=1e-5)
        assert torch.allclose(torch.tensor(row["probabilities"]), probabilities, atol=1e-5)
        assert row["argmax"] == int(probabilities.argmax()) and abs(sum(row["probabilities"]) - 1) < 1e-5

    table = compare(*args)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[:3] == [f"image: {image}", f"[1] {world_model}", "[2] hf-hub:world/base"]
    picked = next(line for line in lines if line.startswith(texts[report["models"][0]["argmax"]]))
    assert picked.count("*") == 2  # both columns mark the same pick
    assert sum(line.count("*") for line in lines if line.startswith(tuple(texts))) == 2


def test_text_pairs_and_probe_without_image(world_model):
    texts = ["a red circle", "no red circle"]
    result = compare(world_model, "--text", texts[0], "--text", texts[1], "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    base = npl.load_clip(world_model)
    embeddings = base.encode_text(texts)
    assert report["pairs"] == [[0, 1]]
    assert abs(report["models"][0]["cosines"][0] - float(embeddings[0] @ embeddings[1])) < 1e-5
    table = compare(world_model, "--text", texts[0], "--text", texts[1])
    assert "a red circle  <->  no red circle" in table.output

    probe = compare(world_model, "--json")
    assert probe.exit_code == 0, probe.output
    metrics = json.loads(probe.output)["models"][0]["probe"]
    expected = npl.get_one("benchmarks", "negation-probe").run(base, progress=False)
    assert metrics["n_pairs"] == expected["n_pairs"] > 0
    assert abs(metrics["cosine"]["mean"] - expected["cosine"]["mean"]) < 1e-6
    table = compare(world_model)
    assert table.exit_code == 0 and table.output.startswith("negation probe: cosine between")
    assert f"{expected['cosine']['mean']:.4f}" in table.output


def test_bad_input_fails_in_one_line(tmp_path):
    from PIL import Image

    model, image = tmp_path / "negationclip_ViT-B32.pth", tmp_path / "red.png"
    torch.save(openai_state_dict(), model)
    Image.new("RGB", (32, 32), "red").save(image)
    (tmp_path / "notes.txt").write_text("not an image")
    cases = {
        ("--image", str(tmp_path / "missing.png"), "--text", "a", "--text", "b"): "missing.png: no such file",
        ("--image", str(tmp_path / "notes.txt"), "--text", "a", "--text", "b"): "notes.txt: not a readable image",
        ("--image", str(image)): "--image needs at least two --text captions",
        ("--text", "only one"): "give at least two --text captions",
    }
    for args, message in cases.items():
        result = compare(str(model), *args)
        assert result.exit_code == 1 and message in result.output, result.output
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    missing = compare(str(model), "nobody/nothing-here", "--text", "a", "--text", "b")
    assert missing.exit_code == 1 and missing.output.count("\n") == 1
    assert missing.output.startswith("Error: nobody/nothing-here: not a local path, and ")
    text_only = tmp_path / "text_only.pth"
    torch.save(openai_state_dict(vision=False), text_only)
    result = compare(str(text_only), "--image", str(image), "--text", "a", "--text", "b")
    assert result.exit_code == 1
    assert result.output == f"Error: {text_only}: a text-only model (no vision tower); compare it without --image\n"


OFFLINE_SCRIPT = """
import sys
import negation_plugins as npl
from negation_plugins.hub import HubNameError
embeddings = npl.load_clip(sys.argv[1]).encode_text(["a dog", "no dog"])
print(float(embeddings[0] @ embeddings[1]))
try:
    npl.load_clip(sys.argv[2])
except HubNameError as error:
    print(error)
"""


def test_hub_name_through_environment_variables_online_then_offline(tmp_path):
    """A fresh process configured only by HF_ENDPOINT / HF_HOME / HF_HUB_DISABLE_XET runs `negclip compare` on a Hub
    name; the next one, with HF_HUB_OFFLINE=1, loads it from the cache without a request and names what is missing."""
    name = "hf-hub:jerryray/negationclip/negationclip_ViT-B32.pth"
    with HubServer("hf_unused_token_0123456789") as server:
        server.state.publish("jerryray/negationclip", {"negationclip_ViT-B32.pth": torch_bytes(openai_state_dict())})
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
        env |= {
            "HF_ENDPOINT": server.endpoint,
            "HF_HOME": str(tmp_path / "hf_home"),
            "HF_HUB_DISABLE_XET": "1",
            "PYTHONPATH": str(REPO_ROOT),
        }
        cli_command = [sys.executable, "-c", "from negation_plugins.cli import cli; cli()", "compare", name]
        online = subprocess.run(
            [*cli_command, "--text", "a dog", "--text", "no dog", "--json"], env=env, capture_output=True, text=True
        )
        assert online.returncode == 0, online.stderr
        assert any("/resolve/main/negationclip_ViT-B32.pth" in r["path"] for r in server.state.requests)
        seen = len(server.state.requests)
        missing = "hf-hub:jerryray/negationclip/other.pth"
        offline = subprocess.run(
            [sys.executable, "-c", OFFLINE_SCRIPT, name, missing],
            env=env | {"HF_HUB_OFFLINE": "1"},
            capture_output=True,
            text=True,
        )
        assert offline.returncode == 0, offline.stderr
        assert len(server.state.requests) == seen  # the offline process asked nothing
    cosine, error = offline.stdout.strip().splitlines()
    assert abs(float(cosine) - json.loads(online.stdout)["models"][0]["cosines"][0]) < 1e-6
    assert error == (
        f"{missing}: not in the Hugging Face cache ({tmp_path / 'hf_home' / 'hub'}) "
        "and HF_HUB_OFFLINE is set; load it once online (or unset HF_HUB_OFFLINE)"
    )
