"""Push to a real loopback server speaking the Hub upload protocol; the token must never leak."""

import logging
import urllib.request

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import HfApi, constants
from safetensors.torch import save_file

from negation_plugins.cli import cli
from negation_plugins.hub import PushError, push
from negation_plugins.model_card import write_model_card
from tests.hub_server import HubServer

TOKEN = "hf_TESTtoken0123456789abcdefSECRET"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest sets offline; this server is loopback
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no saved login of the machine is used
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with HubServer(TOKEN) as server:
        yield server


@pytest.fixture
def trained(tmp_path):
    """A folder shaped like the trainer's output: open_clip, transformers, peft and diffusers LoRA, card."""
    root = tmp_path / "run"
    (root / "transformers").mkdir(parents=True)
    (root / "lora").mkdir()
    (root / "open_clip_config.json").write_text('{"model_cfg": {"embed_dim": 8}}')
    save_file(
        {"w": torch.arange(6, dtype=torch.float32)},
        root / "open_clip_model.safetensors",
    )
    (root / "transformers" / "config.json").write_text('{"model_type": "clip"}')
    (root / "lora" / "adapter_config.json").write_text('{"r": 4}')
    save_file({"a": torch.ones(2, 2)}, root / "lora" / "adapter_model.safetensors")
    save_file(
        {"text_encoder.b": torch.zeros(3)},
        root / "lora" / "pytorch_lora_weights.safetensors",
    )
    write_model_card(
        root,
        base_model="org/base",
        results_after={"mcq": {"accuracy": 0.5}},
        objectives=["omni"],
    )
    return root


def local_files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def assert_token_absent(hub, caplog, *texts):
    for path, data in ((p, d) for repo in hub.state.repos.values() for p, d in repo.files.items()):
        assert TOKEN.encode() not in data, path
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
    for text in texts:
        assert TOKEN not in text


def test_push_uploads_every_file_byte_for_byte(hub, trained, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    url = push(trained, "tester/neg-clip", private=True, token=TOKEN, endpoint=hub.endpoint)
    repo = hub.state.repos["tester/neg-clip"]
    assert repo.files == local_files(trained)
    assert repo.private is True
    assert url == f"{hub.endpoint}/tester/neg-clip/commit/{repo.sha}"
    assert repo.commits[0]["summary"].startswith("Upload negation-aware CLIP model")
    # Every request carried the token in the Authorization header only, never in a URL.
    assert all(TOKEN not in r["path"] for r in hub.state.requests)
    assert {r["path"].split("?")[0].rsplit("/", 1)[0] for r in hub.state.requests if r["method"] == "POST"} >= {
        "/api/repos",
        "/api/models/tester/neg-clip/preupload",
        "/api/models/tester/neg-clip/commit",
    }
    # Read back through huggingface_hub and plain HTTP.
    info = HfApi(endpoint=hub.endpoint, token=TOKEN).model_info("tester/neg-clip")
    assert sorted(s.rfilename for s in info.siblings) == sorted(local_files(trained))
    request = urllib.request.Request(
        f"{hub.endpoint}/tester/neg-clip/resolve/main/lora/adapter_model.safetensors",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request) as response:
        assert response.read() == (trained / "lora" / "adapter_model.safetensors").read_bytes()
    out = capsys.readouterr()
    assert_token_absent(hub, caplog, out.out, out.err)


def test_adapter_only_and_repush_to_existing_repo(hub, trained, caplog):
    caplog.set_level(logging.DEBUG)
    push(trained, "tester/neg-lora", adapter_only=True, token=TOKEN, endpoint=hub.endpoint)
    repo = hub.state.repos["tester/neg-lora"]
    expected = [
        "README.md",
        "lora/adapter_config.json",
        "lora/adapter_model.safetensors",
        "lora/pytorch_lora_weights.safetensors",
    ]
    assert sorted(repo.files) == expected
    assert all(repo.files[p] == (trained / p).read_bytes() for p in expected)
    assert repo.private is False

    # Second push: the repo exists (409 answered, exist_ok) and only the changed file is sent.
    write_model_card(trained, base_model="org/base", results_after={"mcq": {"accuracy": 0.9}})
    push(trained, "tester/neg-lora", adapter_only=True, token=TOKEN, endpoint=hub.endpoint)
    assert len(repo.commits) == 2 and repo.commits[1]["paths"] == ["README.md"]
    assert repo.files["README.md"] == (trained / "README.md").read_bytes()
    assert_token_absent(hub, caplog)


def test_cli_push_reads_token_from_environment(hub, trained, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = CliRunner().invoke(
        cli,
        [
            "push",
            str(trained),
            "tester/cli-model",
            "--endpoint",
            hub.endpoint,
            "--adapter-only",
            "--private",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"pushed {trained} to {hub.endpoint}/tester/cli-model/commit/" in result.output
    assert hub.state.repos["tester/cli-model"].private is True
    assert "lora/adapter_config.json" in hub.state.repos["tester/cli-model"].files
    assert_token_absent(hub, caplog, result.output)


def test_wrong_token_fails_clearly_without_echoing_it(hub, trained, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "hf_WRONGtokenWRONGtokenWRONG"
    with pytest.raises(PushError, match="push of .* to tester/x failed: .*401") as error:
        push(trained, "tester/x", token=wrong, endpoint=hub.endpoint)
    assert wrong not in str(error.value)
    assert hub.state.repos == {}
    assert all(wrong not in record.getMessage() for record in caplog.records)


def test_nothing_to_push_fails_before_any_request(hub, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "open_clip_config.json").write_text("{}")
    with pytest.raises(PushError, match="holds no adapter files"):
        push(
            tmp_path / "empty",
            "tester/x",
            adapter_only=True,
            token=TOKEN,
            endpoint=hub.endpoint,
        )
    with pytest.raises(PushError, match="not a directory"):
        push(tmp_path / "missing", "tester/x", token=TOKEN, endpoint=hub.endpoint)
    assert hub.state.requests == []


def test_offline_mode_is_reported(trained, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PushError, match="HF_HUB_OFFLINE is set"):
        push(trained, "tester/x", token=TOKEN, endpoint="http://127.0.0.1:9")
