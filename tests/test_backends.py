"""Every CLIP format in: OpenAI-layout state dicts (NegationCLIP / CoN-CLIP / Omni-NegCLIP files), transformers
folders; and out again with `negclip convert`."""

import json

import open_clip
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import negation_plugins as npl
from negation_plugins.backends.openai_state_dict import (
    StateDictError,
    infer_openai_config,
)
from negation_plugins.cli import cli
from negation_plugins.tokenizer import clip_tokenizer


def openai_state_dict(
    *,
    embed_dim=32,
    image_size=32,
    patch_size=8,
    vision_width=64,
    vision_layers=2,
    context_length=77,
    vocab_size=49408,
    text_width=64,
    text_layers=2,
    vision=True,
    seed=0,
    make=None,
):
    """Random weights in the exact key layout of OpenAI's clip/model.py (``CLIP.state_dict()``), as published
    by NegationCLIP. Written from OpenAI's module definitions, not from open_clip."""
    g = torch.Generator().manual_seed(seed)
    make = make or (lambda *shape: torch.randn(*shape, generator=g) * 0.05)

    def blocks(prefix, width, layers):
        out = {}
        for i in range(layers):
            p = f"{prefix}transformer.resblocks.{i}."
            out |= {
                p + "attn.in_proj_weight": make(3 * width, width),
                p + "attn.in_proj_bias": make(3 * width),
                p + "attn.out_proj.weight": make(width, width),
                p + "attn.out_proj.bias": make(width),
                p + "ln_1.weight": 1 + make(width),
                p + "ln_1.bias": make(width),
                p + "mlp.c_fc.weight": make(4 * width, width),
                p + "mlp.c_fc.bias": make(4 * width),
                p + "mlp.c_proj.weight": make(width, 4 * width),
                p + "mlp.c_proj.bias": make(width),
                p + "ln_2.weight": 1 + make(width),
                p + "ln_2.bias": make(width),
            }
        return out

    state = {}
    if vision:
        grid = image_size // patch_size
        state |= {
            "visual.class_embedding": make(vision_width),
            "visual.positional_embedding": make(grid * grid + 1, vision_width),
            "visual.proj": make(vision_width, embed_dim),
            "visual.conv1.weight": make(vision_width, 3, patch_size, patch_size),
            "visual.ln_pre.weight": 1 + make(vision_width),
            "visual.ln_pre.bias": make(vision_width),
        }
        state |= blocks("visual.", vision_width, vision_layers)
        state |= {"visual.ln_post.weight": 1 + make(vision_width), "visual.ln_post.bias": make(vision_width)}
    state |= {"positional_embedding": make(context_length, text_width), "text_projection": make(text_width, embed_dim)}
    if vision:
        state["logit_scale"] = torch.tensor(4.6052)
    state["token_embedding.weight"] = make(vocab_size, text_width)
    state |= blocks("", text_width, text_layers)
    state |= {"ln_final.weight": 1 + make(text_width), "ln_final.bias": make(text_width)}
    return state


def assert_holds(model, state):
    loaded = model.state_dict()
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor.float()), key


@pytest.fixture(scope="module")
def negationclip_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("negationclip") / "negationclip_ViT-B32.pth"
    state = openai_state_dict()
    torch.save(state, path)
    return path, state


def test_negationclip_style_file_loads_exactly(negationclip_file):
    path, state = negationclip_file
    bundle = npl.load_clip(str(path))
    assert bundle.info["backend"] == "openai"
    cfg = bundle.info["model_cfg"]
    assert cfg["embed_dim"] == 32 and cfg["quick_gelu"] is True
    assert cfg["vision_cfg"] | {} == {
        "layers": 2,
        "width": 64,
        "head_width": 64,
        "patch_size": 8,
        "image_size": 32,
        "mlp_ratio": 4.0,
    }
    assert (cfg["text_cfg"]["width"], cfg["text_cfg"]["heads"], cfg["text_cfg"]["layers"]) == (64, 1, 2)
    assert set(bundle.model.state_dict()) == set(state)
    assert_holds(bundle.model, state)
    assert type(bundle.model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    from PIL import Image

    text = bundle.encode_text(["a dog with no cat", "a cat"])
    image = bundle.encode_image([Image.new("RGB", (40, 30), "red")])
    assert text.shape == (2, 32) and image.shape == (1, 32)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2))
    assert bundle.context_length == 77 and abs(bundle.logit_scale - 100.0) < 0.01


@pytest.mark.parametrize("fmt", ["model_wrapper", "ddp_state_dict_wrapper", "safetensors"])
def test_wrapped_and_safetensors_files_load(tmp_path, fmt):
    state = openai_state_dict(seed=1)
    if fmt == "safetensors":
        path = tmp_path / "omni_negclip.safetensors"
        save_file(state, str(path))
    elif fmt == "model_wrapper":  # CoN-CLIP / Omni-NegCLIP
        path = tmp_path / "conclip_b32.pt"
        torch.save({"model": state, "epoch": 4, "optimizer": {"lr": 1e-6}}, path)
    else:
        path = tmp_path / "ckpt.bin"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    bundle = npl.load_clip(str(path))
    assert bundle.info["backend"] == "openai"
    assert_holds(bundle.model, state)


def test_half_precision_and_metadata_keys_of_original_openai_dicts(tmp_path):
    state = {k: v.half() for k, v in openai_state_dict(seed=2).items()}
    state |= {
        "input_resolution": torch.tensor(32),
        "context_length": torch.tensor(77),
        "vocab_size": torch.tensor(49408),
    }
    torch.save(state, tmp_path / "fp16.pth")
    bundle = npl.load_clip(f"openai:{tmp_path / 'fp16.pth'}")
    assert bundle.model.token_embedding.weight.dtype == torch.float32
    assert torch.equal(bundle.model.ln_final.bias, state["ln_final.bias"].float())


@pytest.mark.parametrize(
    "problem, needle",
    [
        ("missing", "missing keys: transformer.resblocks.1.ln_2.bias"),
        ("unexpected", "unexpected keys: transformer.resblocks.0.attn.extra_bias"),
        ("misshaped", r"shape mismatch: visual.ln_post.weight \(63,\) vs \(64,\)"),
        ("not_clip", "not an OpenAI-CLIP state dict: missing keys token_embedding.weight"),
    ],
)
def test_bad_state_dicts_name_the_keys(tmp_path, problem, needle):
    state = openai_state_dict(seed=3)
    if problem == "missing":
        del state["transformer.resblocks.1.ln_2.bias"]
    elif problem == "unexpected":
        state["transformer.resblocks.0.attn.extra_bias"] = torch.zeros(3)
    elif problem == "misshaped":
        state["visual.ln_post.weight"] = torch.ones(63)
    else:
        state = {"encoder.weight": torch.zeros(2, 2)}
    path = tmp_path / f"{problem}.pth"
    torch.save(state, path)
    with pytest.raises(StateDictError, match=needle) as err:
        npl.load_clip(str(path))
    assert str(path) in str(err.value)


def test_text_only_state_dict_and_heads_override(tmp_path):
    state = openai_state_dict(vision=False, text_width=96, seed=4)
    torch.save(state, tmp_path / "text.pth")
    with pytest.raises(StateDictError, match="text_heads"):
        npl.load_clip(str(tmp_path / "text.pth"))
    bundle = npl.load_clip(str(tmp_path / "text.pth"), text_heads=3)
    assert not bundle.has_vision and bundle.model.transformer.resblocks[0].attn.num_heads == 3
    assert_holds(bundle.model, state)
    assert bundle.encode_text(["no"]).shape == (1, 32)
    with pytest.raises(ValueError, match="text-only"):
        bundle.encode_image(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"])
def test_published_architectures_are_inferred_from_shapes(name):
    """Real-size key layouts (shapes only, no memory) give open_clip's own config for each NegationCLIP variant."""
    reference = open_clip.get_model_config(name)
    v, t = reference["vision_cfg"], reference["text_cfg"]
    state = openai_state_dict(
        embed_dim=reference["embed_dim"],
        image_size=v["image_size"],
        patch_size=v["patch_size"],
        vision_width=v["width"],
        vision_layers=v["layers"],
        text_width=t["width"],
        text_layers=t["layers"],
        make=lambda *shape: torch.empty(*shape, device="meta"),
    )
    cfg = infer_openai_config(state, name)
    assert cfg["embed_dim"] == reference["embed_dim"]
    for key in ("width", "layers", "patch_size", "image_size"):
        assert cfg["vision_cfg"][key] == v[key], key
    assert cfg["vision_cfg"]["width"] // cfg["vision_cfg"]["head_width"] == v["width"] // v.get("head_width", 64)
    for key in ("width", "heads", "layers", "context_length", "vocab_size"):
        assert cfg["text_cfg"][key] == t.get(key, {"context_length": 77, "vocab_size": 49408}.get(key)), key


def test_resnet_openai_state_dict_loads(tmp_path):
    from open_clip.model import CLIP

    torch.manual_seed(5)
    reference = CLIP(
        32,
        vision_cfg={"layers": (1, 1, 1, 1), "width": 8, "image_size": 64},
        text_cfg={"context_length": 77, "width": 64, "heads": 1, "layers": 1},
        quick_gelu=True,
    ).eval()
    torch.save(reference.state_dict(), tmp_path / "rn.pt")
    bundle = npl.load_clip(str(tmp_path / "rn.pt"))
    assert_holds(bundle.model, reference.state_dict())
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(bundle.model.encode_image(image), reference.encode_image(image))


def _hf_text_folder(tmp_path, with_projection):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(6)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    model = cls(
        CLIPTextConfig(
            hidden_size=64, intermediate_size=256, num_attention_heads=4, num_hidden_layers=2, projection_dim=32
        )
    ).eval()
    folder = tmp_path / cls.__name__
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.parametrize("with_projection", [True, False])
def test_transformers_text_folder_loads(tmp_path, with_projection):
    hf, folder = _hf_text_folder(tmp_path, with_projection)
    bundle = npl.load_clip(str(folder))
    assert bundle.info["backend"] == "transformers" and not bundle.has_vision
    captions = ["there is no dog", "a dog"]
    ids = clip_tokenizer()(captions, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = hf(input_ids=ids)
    expected = out.text_embeds if with_projection else out.pooler_output
    got = bundle.encode_text(captions, normalize=False)
    assert (got - expected).abs().max() <= 1e-5


def test_transformers_folder_with_missing_weight_names_it(tmp_path):
    from safetensors.torch import load_file

    _, folder = _hf_text_folder(tmp_path, True)
    weights = load_file(str(folder / "model.safetensors"))
    key = next(k for k in weights if k.endswith("encoder.layers.1.mlp.fc2.bias"))
    del weights[key]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing keys: .*encoder.layers.1.mlp.fc2.bias"):
        npl.load_clip(str(folder))


def test_convert_command_round_trip(negationclip_file, tmp_path):
    from transformers import CLIPModel, CLIPTokenizer

    path, state = negationclip_file
    runner = CliRunner()
    hf_dir, oc_dir = tmp_path / "hf", tmp_path / "oc"
    result = runner.invoke(cli, ["convert", str(path), str(hf_dir), "--to", "transformers"])
    assert result.exit_code == 0, result.output
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in hf_dir.iterdir()
    }
    assert len(CLIPTokenizer.from_pretrained(hf_dir)) == 49408
    assert json.loads((hf_dir / "config.json").read_text())["architectures"] == ["CLIPModel"]
    assert isinstance(CLIPModel.from_pretrained(hf_dir), CLIPModel)

    again = runner.invoke(cli, ["convert", str(path), str(hf_dir), "--to", "transformers"])
    assert again.exit_code != 0 and "already exists" in again.output

    result = runner.invoke(cli, ["convert", str(hf_dir), str(oc_dir), "--to", "open_clip"])
    assert result.exit_code == 0, result.output
    bundle = npl.load_clip(f"local-dir:{oc_dir}")
    assert_holds(bundle.model, state)  # .pth -> transformers -> open_clip folder: bit-for-bit the same weights
    original = npl.load_clip(str(path))
    torch.testing.assert_close(bundle.encode_text(["no cat"]), original.encode_text(["no cat"]), atol=0, rtol=0)

    text_dir = tmp_path / "text"
    result = runner.invoke(cli, ["convert", str(path), str(text_dir), "--to", "transformers", "--kind", "text"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["convert", str(text_dir), str(tmp_path / "x"), "--to", "open_clip"])
    assert result.exit_code != 0 and "text-only" in result.output and not (tmp_path / "x").exists()


def test_open_clip_folder_saves_back_out(negationclip_file, tmp_path):
    from negation_plugins.convert import save_open_clip

    path, state = negationclip_file
    first = save_open_clip(npl.load_clip(str(path)), tmp_path / "first")
    reloaded = npl.load_clip(f"local-dir:{first}")
    assert reloaded.info["model_cfg"]["text_cfg"]["heads"] == 1
    second = save_open_clip(reloaded, tmp_path / "second")
    assert json.loads((first / "open_clip_config.json").read_text()) == json.loads(
        (second / "open_clip_config.json").read_text()
    )
    assert_holds(npl.load_clip(f"local-dir:{second}").model, state)
