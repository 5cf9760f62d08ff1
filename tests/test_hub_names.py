"""Every Hub name form of ``load_clip``, downloaded by huggingface_hub from a real loopback server speaking the Hub
download protocol (tests/hub_server.py); a fresh cache per test. Loaded names must give the source model's
embeddings."""

import json

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import constants

import negation_plugins as npl
from negation_plugins.cli import cli
from negation_plugins.hub import HubNameError, parse_hub_name
from negation_plugins.testing import text_config, tiny_sd_pipeline
from tests.hub_server import download_hub
from tests.test_backends import openai_state_dict
from tests.test_integrations_helpers import PROMPTS, open_clip_token_states
from tests.test_integrations_sd import assert_states_equal, prompt_embeds

TOKEN = "hf_TESTtoken0123456789abcdefSECRET"
CAPTIONS = ["a street with no cars", "a dog, not a cat", "a red bicycle"]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with download_hub(monkeypatch, tmp_path / "hf_home", TOKEN) as server:
        yield server


def offline(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def torch_bytes(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def folder_files(folder, prefix="") -> dict[str, bytes]:
    return {prefix + p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def resolve_requests(server) -> list[str]:
    return [r["path"] for r in server.state.requests if "/resolve/" in r["path"]]


def assert_close(got, expected):
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-5


@pytest.fixture(scope="module")
def openai_state():
    """Random weights in the published NegationCLIP layout (an OpenAI CLIP state dict)."""
    return openai_state_dict(text_width=64, text_layers=1, vision_layers=1)


@pytest.fixture(scope="module")
def reference(openai_state, tmp_path_factory):
    """The same weights loaded from a local file: what every Hub name of them must reproduce."""
    path = tmp_path_factory.mktemp("local") / "negationclip_ViT-L14.pth"
    torch.save(openai_state, path)
    return npl.load_clip(str(path))


def test_grammar():
    file = parse_hub_name("hf-hub:jerryray/negationclip/negationclip_ViT-L14.pth")
    assert (file.kind, file.repo_id, file.path, file.revision) == (
        "file",
        "jerryray/negationclip",
        "negationclip_ViT-L14.pth",
        None,
    )
    assert parse_hub_name("hf-hub:org/repo@v1.0").kind == "open_clip"
    nested = parse_hub_name("hf-hub:org/repo/ckpts/epoch_5/model.safetensors@abc")
    assert (nested.kind, nested.path, nested.revision) == ("file", "ckpts/epoch_5/model.safetensors", "abc")
    te = parse_hub_name("org/sdxl/text_encoder_2@refs/pr/1")
    assert (te.kind, te.repo_id, te.path, te.revision) == ("transformers", "org/sdxl", "text_encoder_2", "refs/pr/1")
    assert parse_hub_name("openai/clip-vit-large-patch14").path == ""
    for local in ("ViT-B-32:openai", "ViT-B-32", "local-dir:out/model", "/abs/missing", "runs/missing.pth", "./out/te"):
        assert parse_hub_name(local) is None, local
    with pytest.raises(HubNameError, match="must name a checkpoint file"):
        parse_hub_name("hf-hub:org/repo/text_encoder")
    with pytest.raises(HubNameError, match="is not a Hub name"):
        parse_hub_name("hf-hub:org")


def test_checkpoint_file_in_a_repo(hub, openai_state, reference):
    hub.state.publish("jerryray/negationclip", {"negationclip_ViT-L14.pth": torch_bytes(openai_state)})
    bundle = npl.load_clip("hf-hub:jerryray/negationclip/negationclip_ViT-L14.pth")
    assert bundle.spec == "hf-hub:jerryray/negationclip/negationclip_ViT-L14.pth"
    assert bundle.info["backend"] == "openai"
    assert bundle.info["hub"]["commit"] == hub.state.repos["jerryray/negationclip"].sha
    assert_close(bundle.encode_text(CAPTIONS), reference.encode_text(CAPTIONS))
    pixels = torch.rand(2, 3, 32, 32)
    assert_close(bundle.encode_image(pixels), reference.encode_image(pixels))
    # The HEAD/GET pair went to the resolve endpoint, anonymously (a public repo needs no token).
    assert resolve_requests(hub) == ["/jerryray/negationclip/resolve/main/negationclip_ViT-L14.pth"] * 2
    assert [r["method"] for r in hub.state.requests if "/resolve/" in r["path"]] == ["HEAD", "GET"]
    assert all("Authorization" not in r["headers"] for r in hub.state.requests)


@pytest.mark.parametrize("layout", ["model_wrapper", "state_dict_module_prefix", "safetensors"])
def test_checkpoint_file_layouts_in_subfolders(hub, openai_state, reference, layout):
    from safetensors.torch import save

    if layout == "model_wrapper":  # CoN-CLIP / Omni-NegCLIP
        path, data = "ckpts/conclip.pt", torch_bytes({"model": openai_state, "epoch": 3})
    elif layout == "state_dict_module_prefix":  # open_clip training checkpoints under DDP
        path = "logs/run/checkpoints/epoch_2.bin"
        data = torch_bytes({"state_dict": {f"module.{k}": v for k, v in openai_state.items()}, "epoch": 2})
    else:
        path, data = "weights/model.safetensors", save({k: v.contiguous() for k, v in openai_state.items()})
    hub.state.publish("someone/negclip", {path: data, "README.md": b"# card"})
    bundle = npl.load_clip(f"hf-hub:someone/negclip/{path}")
    assert_close(bundle.encode_text(CAPTIONS), reference.encode_text(CAPTIONS))


def test_open_clip_repo(hub, reference, tmp_path):
    from negation_plugins.convert import save_open_clip

    folder = save_open_clip(reference, tmp_path / "oc")
    hub.state.publish("laion/tiny-clip", folder_files(folder))
    bundle = npl.load_clip("hf-hub:laion/tiny-clip")
    assert bundle.info["backend"] == "open_clip" and bundle.spec == "hf-hub:laion/tiny-clip"
    assert_close(bundle.encode_text(CAPTIONS), reference.encode_text(CAPTIONS))


def tiny_clip_model():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config=text_config(48).to_dict() | {"num_hidden_layers": 1},
        vision_config=vision | {"image_size": 32, "patch_size": 16, "hidden_act": "quick_gelu"},
        projection_dim=24,
    )
    return CLIPModel(config).eval()


def token_ids(texts):
    from negation_plugins.tokenizer import clip_tokenizer

    return clip_tokenizer()(texts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]


def test_transformers_clip_repo_by_bare_id(hub, tmp_path):
    model = tiny_clip_model()
    model.save_pretrained(tmp_path / "clip")
    (tmp_path / "clip" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]})
    )
    hub.state.publish("openai/clip-vit-tiny", folder_files(tmp_path / "clip") | {"tf_model.h5": b"not fetched"})
    bundle = npl.load_clip("openai/clip-vit-tiny")
    assert bundle.info["backend"] == "transformers" and bundle.info["source_class"] == "CLIPModel"
    with torch.no_grad():
        text = model.get_text_features(input_ids=token_ids(CAPTIONS)).pooler_output
        pixels = torch.rand(2, 3, 32, 32)
        image = model.get_image_features(pixel_values=pixels).pooler_output
    assert_close(bundle.encode_text(CAPTIONS, normalize=False), text)
    assert_close(bundle.encode_image(pixels, normalize=False), image)
    assert bundle.model.visual.preprocess_cfg["mean"] == [0.5, 0.5, 0.5]  # the repo's preprocessor_config.json
    assert not any(p.endswith("tf_model.h5") for p in resolve_requests(hub))


def test_diffusers_text_encoder_subfolders(hub, tmp_path):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(1)
    encoders = {
        "text_encoder": CLIPTextModel(text_config(32)).eval(),
        "text_encoder_2": CLIPTextModelWithProjection(text_config(48, projection_dim=24)).eval(),
    }
    files = {"model_index.json": b'{"_class_name": "StableDiffusionXLPipeline"}', "unet/config.json": b"{}"}
    for sub, encoder in encoders.items():
        encoder.save_pretrained(tmp_path / sub)
        files |= folder_files(tmp_path / sub, f"{sub}/")
    hub.state.publish("stabilityai/tiny-sdxl", files)
    ids = token_ids(CAPTIONS)
    with torch.no_grad():
        expected = {
            "text_encoder": encoders["text_encoder"](input_ids=ids).pooler_output,
            "text_encoder_2": encoders["text_encoder_2"](input_ids=ids).text_embeds,
        }
    for sub, encoder in encoders.items():
        bundle = npl.load_clip(f"stabilityai/tiny-sdxl/{sub}")
        assert bundle.info["source_class"] == type(encoder).__name__ and not bundle.has_vision
        assert_close(bundle.encode_text(CAPTIONS, normalize=False), expected[sub])
    with pytest.raises(HubNameError, match=r"has no file config.json: .*stabilityai/tiny-sdxl/text_encoder\)"):
        npl.load_clip("stabilityai/tiny-sdxl")


def test_sharded_transformers_weights(hub, tmp_path):
    model = tiny_clip_model()
    model.save_pretrained(tmp_path / "clip", max_shard_size="2MB")
    files = folder_files(tmp_path / "clip")
    assert "model.safetensors.index.json" in files and len(files) > 3
    hub.state.publish("big/clip", files)
    bundle = npl.load_clip("big/clip")
    with torch.no_grad():
        text = model.get_text_features(input_ids=token_ids(CAPTIONS)).pooler_output
    assert_close(bundle.encode_text(CAPTIONS, normalize=False), text)


def test_revisions_branch_tag_and_commit(hub, openai_state, reference):
    first = hub.state.publish("jerryray/negationclip", {"m.pth": torch_bytes(openai_state)}, tag="v1")
    changed = {k: v + 0.01 if k == "ln_final.bias" else v for k, v in openai_state.items()}
    hub.state.publish("jerryray/negationclip", {"m.pth": torch_bytes(changed)})
    latest = npl.load_clip("hf-hub:jerryray/negationclip/m.pth")
    assert not torch.allclose(latest.encode_text(CAPTIONS), reference.encode_text(CAPTIONS), atol=1e-4)
    for revision in ("v1", first):
        bundle = npl.load_clip(f"hf-hub:jerryray/negationclip/m.pth@{revision}")
        assert bundle.info["hub"]["commit"] == first
        assert_close(bundle.encode_text(CAPTIONS), reference.encode_text(CAPTIONS))
    with pytest.raises(
        HubNameError, match=r"^hf-hub:jerryray/negationclip/m.pth@v9: jerryray/negationclip has no revision 'v9'$"
    ):
        npl.load_clip("hf-hub:jerryray/negationclip/m.pth@v9")


def test_missing_file_repo_and_malformed_names_fail_in_one_line(hub, openai_state):
    hub.state.publish("jerryray/negationclip", {"negationclip_ViT-B32.pth": torch_bytes(openai_state)})
    cases = {
        "hf-hub:jerryray/negationclip/negationclip_ViT-H14.pth": "jerryray/negationclip has no file negationclip_ViT-H14.pth",
        "hf-hub:jerryray/negationclip": "has no file open_clip_config.json: not an open_clip repo. Name one checkpoint",
        "jerryray/negationclip": "has no file config.json: not a transformers model folder",
        "nobody/nothing": "not a local path, and there is no repository nobody/nothing on the Hub at http://127.0.0.1",
        "hf-hub:nobody/nothing/x.pth": "there is no repository nobody/nothing",
    }
    for name, message in cases.items():
        with pytest.raises(HubNameError) as error:
            npl.load_clip(name)
        assert message in str(error.value) and "\n" not in str(error.value), name
        assert str(error.value).startswith(name + ": ")
    hub.state.publish("org/private", {"m.pth": torch_bytes(openai_state)}, private=True)
    with pytest.raises(HubNameError, match="no repository org/private .*or it is private"):
        npl.load_clip("hf-hub:org/private/m.pth")


def test_unavailable_hub_is_retried(hub, openai_state, reference):
    hub.state.publish("jerryray/negationclip", {"m.pth": torch_bytes(openai_state)})
    hub.state.unavailable = 2
    bundle = npl.load_clip("hf-hub:jerryray/negationclip/m.pth")
    assert_close(bundle.encode_text(CAPTIONS), reference.encode_text(CAPTIONS))
    calls = [r["method"] for r in hub.state.requests if "/resolve/" in r["path"]]
    assert calls == ["HEAD", "HEAD", "HEAD", "GET"]  # two refused, retried with backoff, then the download


def test_private_repo_with_token(hub, openai_state, reference, monkeypatch):
    hub.state.publish("org/private", {"m.pth": torch_bytes(openai_state)}, private=True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    bundle = npl.load_clip("hf-hub:org/private/m.pth")
    assert_close(bundle.encode_text(CAPTIONS), reference.encode_text(CAPTIONS))


def test_offline_loads_from_cache_and_fails_in_one_line_without(hub, openai_state, reference, tmp_path, monkeypatch):
    from transformers import CLIPTextModel

    hub.state.publish("jerryray/negationclip", {"negationclip_ViT-L14.pth": torch_bytes(openai_state)})
    CLIPTextModel(text_config(32)).save_pretrained(tmp_path / "te")
    hub.state.publish("org/sd", folder_files(tmp_path / "te", "text_encoder/"))
    names = ["hf-hub:jerryray/negationclip/negationclip_ViT-L14.pth", "org/sd/text_encoder"]
    online = [npl.load_clip(name).encode_text(CAPTIONS) for name in names]
    seen = len(hub.state.requests)

    offline(monkeypatch)
    for name, expected in zip(names, online):
        assert_close(npl.load_clip(name).encode_text(CAPTIONS), expected)
    assert len(hub.state.requests) == seen  # nothing was asked of the Hub
    assert_close(online[0], reference.encode_text(CAPTIONS))
    for name in ("hf-hub:jerryray/negationclip/negationclip_ViT-B32.pth", "org/other", "hf-hub:org/oc"):
        with pytest.raises(HubNameError) as error:
            npl.load_clip(name)
        message = str(error.value)
        local = "not a local path, and " if not name.startswith("hf-hub:") else ""
        assert (
            message.startswith(f"{name}: {local}not in the Hugging Face cache (") and "HF_HUB_OFFLINE is set" in message
        )
        assert "\n" not in message


def test_existing_local_folder_wins_over_hub_reading(hub, reference, tmp_path, monkeypatch):
    from transformers import CLIPTextModel

    from negation_plugins.convert import save_open_clip

    monkeypatch.chdir(tmp_path)
    CLIPTextModel(text_config(32)).save_pretrained(tmp_path / "out" / "te")
    bundle = npl.load_clip("out/te")
    assert bundle.info["backend"] == "transformers" and "hub" not in bundle.info
    save_open_clip(reference, tmp_path / "runs" / "model")  # what the trainer's --output holds at its top level
    bundle = npl.load_clip("runs/model")
    assert bundle.info["backend"] == "open_clip" and bundle.spec == "runs/model"
    assert_close(bundle.encode_text(CAPTIONS), reference.encode_text(CAPTIONS))
    assert hub.state.requests == []
    with pytest.raises(HubNameError, match="^out/missing: not a local path, and there is no repository out/missing"):
        npl.load_clip("out/missing")
    with pytest.raises(
        FileNotFoundError, match=r"^out/negationclip_ViT-B32.pth: no such checkpoint file \(one in a Hub"
    ):
        npl.load_clip("out/negationclip_ViT-B32.pth")


def test_hub_names_in_convert_and_apply(hub, openai_state, reference, tmp_path):
    """The same names work wherever a model is taken: `negclip convert` and `negation_plugins.apply`."""
    hub.state.publish("jerryray/negationclip", {"negationclip_ViT-L14.pth": torch_bytes(openai_state)})
    name = "hf-hub:jerryray/negationclip/negationclip_ViT-L14.pth"
    result = CliRunner().invoke(cli, ["convert", name, str(tmp_path / "hf"), "--to", "transformers"])
    assert result.exit_code == 0, result.output
    assert_close(npl.load_clip(str(tmp_path / "hf")).encode_text(CAPTIONS), reference.encode_text(CAPTIONS))
    missing = CliRunner().invoke(cli, ["convert", "nobody/nothing", str(tmp_path / "x"), "--to", "open_clip"])
    assert (
        missing.exit_code == 1
        and "Error: nobody/nothing: not a local path, and there is no repository" in missing.output
    )
    assert len(missing.output.strip().splitlines()) == 1

    # One apply call puts the published NegationCLIP ViT-L/14 file (64 wide here) into an SD 1.x-shaped pipeline.
    pipe = tiny_sd_pipeline(64)
    assert npl.apply(pipe, name) is pipe
    assert_states_equal(prompt_embeds(pipe), open_clip_token_states(reference, PROMPTS))
