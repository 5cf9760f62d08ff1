"""LoRA round trips: a diffusers-format text-encoder LoRA and our peft-adapter loader give the trained encoder's states."""

import copy

import pytest
import torch

from integrations.lora import AdapterError, load_peft_adapter, write_diffusers_lora
from negation_plugins.testing import tiny_clip, tiny_sd_pipeline, tokenizer
from tests.test_integrations_helpers import PROMPTS, open_clip_token_states

TRANSFORMERS_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
OPEN_CLIP_TARGETS = r"^transformer\.resblocks\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)$"


def prompt_embeds(pipe):
    return pipe.encode_prompt(PROMPTS, "cpu", 1, False)[0]


def hf_states(encoder):
    ids = tokenizer()(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids).last_hidden_state


def up_to_eos():
    ids = tokenizer()(PROMPTS, padding="max_length", max_length=77, return_tensors="pt").input_ids
    return [int((row == 49407).nonzero()[0]) + 1 for row in ids]


def trained_transformers_lora(encoder, seed=0):
    """A peft LoRA with random (non-zero) A and B on a copy of a transformers CLIPTextModel: a 'trained' adapter."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TRANSFORMERS_TARGETS, init_lora_weights=False)
    return get_peft_model(copy.deepcopy(encoder), config), config


def test_diffusers_lora_file_loads_with_adapters_fuse_and_unfuse(tmp_path):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    pipe = tiny_sd_pipeline()
    stock = prompt_embeds(pipe)
    peft_encoder, config = trained_transformers_lora(pipe.text_encoder)
    trained = hf_states(peft_encoder)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(peft_encoder))
    metadata = {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": TRANSFORMERS_TARGETS}
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, text_encoder_lora_layers=layers, text_encoder_lora_adapter_metadata=metadata
    )

    pipe.load_lora_weights(tmp_path, adapter_name="negation")
    torch.testing.assert_close(prompt_embeds(pipe), trained, atol=1e-5, rtol=0)
    pipe.set_adapters(["negation"], adapter_weights=[0.0])
    torch.testing.assert_close(prompt_embeds(pipe), stock, atol=1e-6, rtol=0)
    pipe.set_adapters(["negation"], adapter_weights=[1.0])
    pipe.fuse_lora(components=["text_encoder"])
    torch.testing.assert_close(prompt_embeds(pipe), trained, atol=1e-5, rtol=0)
    pipe.unfuse_lora(components=["text_encoder"])
    pipe.unload_lora_weights()
    torch.testing.assert_close(prompt_embeds(pipe), stock, atol=1e-5, rtol=0)


def test_peft_adapter_from_transformers_tower_into_pipeline(tmp_path):
    pipe = tiny_sd_pipeline()
    peft_encoder, _ = trained_transformers_lora(pipe.text_encoder, seed=1)
    peft_encoder.save_pretrained(tmp_path / "adapter")
    load_peft_adapter(pipe, tmp_path / "adapter", adapter_name="neg")
    torch.testing.assert_close(prompt_embeds(pipe), hf_states(peft_encoder), atol=1e-5, rtol=0)


def test_peft_adapter_trained_on_open_clip_tower_goes_into_pipeline_exactly(tmp_path):
    from peft import LoraConfig, get_peft_model

    import negation_plugins

    base = tiny_clip(64, layers=2)
    trained = copy.deepcopy(base)
    torch.manual_seed(2)
    peft_model = get_peft_model(
        trained.model, LoraConfig(r=4, lora_alpha=16, target_modules=OPEN_CLIP_TARGETS, init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    expected = open_clip_token_states(trained, PROMPTS)  # peft wraps the modules in place

    pipe = tiny_sd_pipeline()
    negation_plugins.apply(pipe, base)
    load_peft_adapter(pipe, tmp_path / "adapter")
    embeds = prompt_embeds(pipe)
    for i, length in enumerate(up_to_eos()):
        torch.testing.assert_close(embeds[i, :length], expected[i, :length], atol=1e-5, rtol=0)

    out = write_diffusers_lora(tmp_path / "adapter", tmp_path / "diffusers")
    assert out.name == "pytorch_lora_weights.safetensors"
    from safetensors.torch import load_file

    keys = load_file(str(out))
    assert "text_encoder.encoder.layers.1.self_attn.k_proj.lora_B.weight" in keys


def test_adapter_errors_are_clear(tmp_path):
    pipe = tiny_sd_pipeline()
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        load_peft_adapter(pipe, tmp_path)
    wide = tiny_sd_pipeline(cross_attention_dim=32)
    peft_encoder, _ = trained_transformers_lora(wide.text_encoder)
    peft_encoder.save_pretrained(tmp_path / "adapter32")
    with pytest.raises(AdapterError, match="trained for width 32 but text_encoder has 64"):
        load_peft_adapter(pipe, tmp_path / "adapter32")


def test_peft_adapter_into_sdxl_text_encoder_2_pooled_output(tmp_path):
    from negation_plugins.testing import tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline()
    peft_encoder, _ = trained_transformers_lora(pipe.text_encoder_2, seed=3)
    peft_encoder.save_pretrained(tmp_path / "adapter")
    load_peft_adapter(pipe, tmp_path / "adapter", slot="text_encoder_2")
    _, _, pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False)
    ids = tokenizer()(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = peft_encoder(ids).text_embeds
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=0)
