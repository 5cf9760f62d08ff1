"""Exact open_clip <-> transformers conversion: same outputs (<= 1e-5), bit-for-bit round trips, loud mismatches."""

import pytest
import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
)

from negation_plugins import convert
from negation_plugins.convert import (
    ConversionError,
    ConversionMismatchError,
    build_open_clip,
    open_clip_text_outputs,
    open_clip_to_transformers,
    transformers_to_open_clip,
)

ATOL = 1e-5


def tiny_model_cfg(quick_gelu=True, heads=4, vocab_size=49408, vision=True, **text):
    """A small open_clip CLIP; 16-wide heads so nothing relies on OpenAI's 64-wide convention."""
    return {
        "embed_dim": 32,
        "quick_gelu": quick_gelu,
        "vision_cfg": {"layers": 2, "width": 64, "head_width": 16, "patch_size": 8, "image_size": 32}
        if vision
        else None,
        "text_cfg": {"context_length": 77, "vocab_size": vocab_size, "width": 64, "heads": heads, "layers": 2} | text,
    }


def random_model(model_cfg, seed=0):
    torch.manual_seed(seed)
    model = build_open_clip(model_cfg).eval()
    with torch.no_grad():  # open_clip zero-inits biases and ones-inits norms: randomize so every weight matters
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def probe_tokens(context_length=77, vocab_size=49408, seed=1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(3, context_length, dtype=torch.long)
    for row, end in enumerate((3, 20, context_length - 1)):
        tokens[row, 0] = 49406 if vocab_size == 49408 else 1
        tokens[row, 1:end] = torch.randint(1, vocab_size - 2, (end - 1,), generator=g)
        tokens[row, end] = vocab_size - 1
    return tokens


def assert_text_matches(oc_model, hf_model, tokens, atol=ATOL):
    with torch.no_grad():
        ours = open_clip_text_outputs(oc_model, tokens)
        # open_clip's own encode_text agrees with the per-token path used for the comparison
        if ours["projected"] is not None:
            torch.testing.assert_close(ours["projected"], oc_model.encode_text(tokens), atol=0, rtol=0)
        text_model = hf_model if isinstance(hf_model, CLIPTextModel) else hf_model.text_model
        out = text_model(input_ids=tokens)
        assert (ours["last_hidden_state"] - out.last_hidden_state).abs().max() <= atol
        assert (ours["pooled"] - out.pooler_output).abs().max() <= atol
        if not isinstance(hf_model, CLIPTextModel):
            projected = hf_model.text_projection(out.pooler_output)
            assert (ours["projected"] - projected).abs().max() <= atol
            if isinstance(hf_model, CLIPTextModelWithProjection):
                assert torch.equal(hf_model(input_ids=tokens).text_embeds, projected)


def assert_state_equal(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) - set(skip) == set(sb) - set(skip)
    for key in set(sa) - set(skip):
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("quick_gelu", [True, False])
@pytest.mark.parametrize("kind", convert.KINDS)
def test_tiny_model_all_kinds_exact_and_round_trip(kind, quick_gelu):
    model = random_model(tiny_model_cfg(quick_gelu=quick_gelu))
    hf = open_clip_to_transformers(model, kind)
    assert (
        type(hf)
        is {"text": CLIPTextModel, "text_with_projection": CLIPTextModelWithProjection, "full": CLIPModel}[kind]
    )
    text_config = hf.config.text_config if kind == "full" else hf.config
    assert text_config.num_attention_heads == 4
    assert text_config.hidden_act == ("quick_gelu" if quick_gelu else "gelu")
    assert text_config.eos_token_id == 49407
    assert_text_matches(model, hf, probe_tokens())
    if kind == "full":
        image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            diff = (model.encode_image(image) - hf.get_image_features(pixel_values=image).pooler_output).abs().max()
        assert diff <= ATOL
        assert hf.vision_model.config.num_attention_heads == 4
    back = transformers_to_open_clip(hf)
    assert (back.visual is None) == (kind != "full")
    skip = {k for k in model.state_dict() if k.startswith("visual.") or k == "logit_scale"} if kind != "full" else set()
    if kind == "text":
        skip.add("text_projection")
    assert_state_equal(model, back, skip)


def test_custom_vocab_eos_pooling_and_norm_eps():
    """Non-CLIP vocab with argmax pooling maps to transformers' legacy eos id 2; 'eos' pooling keeps its id."""
    model = random_model(tiny_model_cfg(vocab_size=1000, vision=False) | {"embed_dim": 32})
    hf = open_clip_to_transformers(model, "text_with_projection")
    assert hf.config.eos_token_id == 2
    assert_text_matches(model, hf, probe_tokens(vocab_size=1000))
    eos_model = random_model(
        tiny_model_cfg(vocab_size=1000, vision=False, pool_type="eos", eos_id=999, norm_kwargs={"eps": 1e-6})
    )
    hf = open_clip_to_transformers(eos_model, "text")
    assert hf.config.eos_token_id == 999 and hf.config.layer_norm_eps == 1e-6
    back = transformers_to_open_clip(hf)
    assert back.text_pool_type == "eos" and back.ln_final.eps == 1e-6


@pytest.mark.parametrize(
    "name, width, heads, layers, embed_dim",
    [("ViT-B/32 text", 512, 8, 12, 512), ("ViT-L/14 text", 768, 12, 12, 768)],
)
def test_real_size_text_towers_agree(name, width, heads, layers, embed_dim):
    cfg = {
        "embed_dim": embed_dim,
        "quick_gelu": True,
        "vision_cfg": None,
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": heads, "layers": layers},
    }
    model = random_model(cfg)
    hf = open_clip_to_transformers(model, "text_with_projection")
    assert (hf.config.hidden_size, hf.config.num_attention_heads, hf.config.num_hidden_layers) == (width, heads, layers)
    assert_text_matches(model, hf, probe_tokens())
    back = transformers_to_open_clip(hf, verify=False)
    assert_state_equal(model, back, skip={"logit_scale"})


def test_transformers_first_direction_real_b32_text_size():
    """Start from a random transformers CLIPTextModel (SD 1.x text encoder shape) and go to open_clip."""
    torch.manual_seed(3)
    hf = CLIPTextModel(
        CLIPTextConfig(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12)
    ).eval()
    model = transformers_to_open_clip(hf)
    assert model.visual is None and model.text_projection is None
    assert_text_matches(model, hf, probe_tokens())
    assert_state_equal(hf, open_clip_to_transformers(model, "text"))


def test_transformers_clip_model_with_gelu_to_open_clip():
    torch.manual_seed(4)
    config = CLIPConfig(
        text_config={
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_attention_heads": 2,
            "num_hidden_layers": 2,
            "hidden_act": "gelu",
        },
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 8,
            "num_hidden_layers": 1,
            "image_size": 32,
            "patch_size": 16,
            "hidden_act": "gelu",
        },
        projection_dim=16,
    )
    hf = CLIPModel(config).eval()
    model = transformers_to_open_clip(hf)
    assert model.model_cfg["quick_gelu"] is False and model.model_cfg["vision_cfg"]["mlp_ratio"] == 2.0
    assert_text_matches(model, hf, probe_tokens())
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (model.encode_image(image) - hf.get_image_features(pixel_values=image).pooler_output).abs().max() <= ATOL
    assert_state_equal(hf, open_clip_to_transformers(model, "full"))


def test_wrong_attention_heads_do_not_pass_silently():
    model = random_model(tiny_model_cfg(heads=4, vision=False))
    hf = open_clip_to_transformers(model, "text")
    wrong = CLIPTextModel(CLIPTextConfig(**{**hf.config.to_dict(), "num_attention_heads": 1})).eval()
    wrong.load_state_dict(hf.state_dict())  # same weights: only the head split differs
    with pytest.raises(ConversionMismatchError, match="last_hidden_state"):
        convert.assert_same_outputs(model, wrong)
    quick = CLIPTextModel(CLIPTextConfig(**{**hf.config.to_dict(), "hidden_act": "gelu"})).eval()
    quick.load_state_dict(hf.state_dict())
    with pytest.raises(ConversionMismatchError):
        convert.assert_same_outputs(model, quick)


def test_unsupported_architectures_are_named():
    from open_clip.model import CLIP

    resnet = CLIP(
        32,
        vision_cfg={"layers": (1, 1, 1, 1), "width": 8, "image_size": 64},
        text_cfg={"context_length": 77, "width": 64, "heads": 1, "layers": 1},
    )
    with pytest.raises(ConversionError, match="ModifiedResNet is not a ViT"):
        open_clip_to_transformers(resnet, "full")
    assert isinstance(open_clip_to_transformers(resnet, "text_with_projection"), CLIPTextModelWithProjection)
    no_proj = random_model(tiny_model_cfg(vision=False, proj_type="none"))
    with pytest.raises(ConversionError, match="needs a text projection"):
        open_clip_to_transformers(no_proj, "text_with_projection")
    with pytest.raises(ConversionError, match="text-only"):
        open_clip_to_transformers(random_model(tiny_model_cfg(vision=False)), "full")
    layer_scale = random_model(tiny_model_cfg(vision=False, ls_init_value=0.1))
    with pytest.raises(ConversionError, match="layer scale"):
        open_clip_to_transformers(layer_scale, "text")
    with pytest.raises(ValueError, match="unknown conversion kind"):
        open_clip_to_transformers(no_proj, "everything")


def test_custom_text_clip_layout_converts():
    """open_clip's CustomTextCLIP keeps the text tower under ``.text``; the conversion follows it."""
    from open_clip.model import CustomTextCLIP

    cfg = tiny_model_cfg()
    torch.manual_seed(7)
    model = CustomTextCLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=True).eval()
    hf = open_clip_to_transformers(model, "full")
    assert_text_matches(model, hf, probe_tokens())
    back = transformers_to_open_clip(hf)
    source = model.state_dict()
    for key, tensor in back.state_dict().items():
        original = source[key if key.startswith(("visual.", "logit_scale")) else f"text.{key}"]
        assert torch.equal(tensor, original), key
