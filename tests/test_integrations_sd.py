"""SD 1.x/2.x and SDXL: swapping puts exactly the new encoder's states into the pipeline; errors are clear."""

import pytest
import torch

import integrations
import negation_plugins
from integrations.diffusers_sd import negation_text_encoder
from negation_plugins.testing import tiny_clip, tiny_sd_pipeline, tiny_sdxl_pipeline, tokenizer
from tests.test_integrations_helpers import PROMPTS, open_clip_token_states


def prompt_embeds(pipe, prompts=PROMPTS):
    embeds, _ = pipe.encode_prompt(prompts, "cpu", 1, False)
    return embeds


def up_to_eos(prompts=PROMPTS):
    """Per prompt, the number of tokens up to and including end-of-text (beyond it only padding differs)."""
    ids = tokenizer()(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    return [int((row == 49407).nonzero()[0]) + 1 for row in ids]


def assert_states_equal(embeds, reference, prompts=PROMPTS, atol=1e-5):
    for i, length in enumerate(up_to_eos(prompts)):
        torch.testing.assert_close(embeds[i, :length], reference[i, :length], atol=atol, rtol=0)


def test_apply_swaps_sd_encoder_and_prompt_embeds_equal_new_encoder():
    pipe = tiny_sd_pipeline()
    stock = pipe.text_encoder
    before = prompt_embeds(pipe)
    bundle = tiny_clip(64)

    assert negation_plugins.apply(pipe, bundle) is pipe

    after = prompt_embeds(pipe)
    assert not torch.allclose(before, after)
    assert_states_equal(after, open_clip_token_states(bundle, PROMPTS))
    assert pipe.stock_text_encoders == {"text_encoder": stock}
    images = pipe(PROMPTS[0], num_inference_steps=2, height=32, width=32, output_type="np").images
    assert images.shape == (1, 32, 32, 3) and bool(torch.isfinite(torch.from_numpy(images)).all())

    integrations.restore(pipe)
    assert pipe.text_encoder is stock
    torch.testing.assert_close(prompt_embeds(pipe), before)
    with pytest.raises(ValueError, match="no swapped text encoder"):
        integrations.restore(pipe)


def test_swapped_encoder_survives_from_pipe_and_restores_there():
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = tiny_sd_pipeline()
    stock = pipe.text_encoder
    negation_plugins.apply(pipe, tiny_clip(64))
    negation_plugins.apply(pipe, tiny_clip(64, seed=1))  # a second swap still remembers the original stock one
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    assert img2img.text_encoder is pipe.text_encoder
    torch.testing.assert_close(prompt_embeds(img2img), prompt_embeds(pipe))
    integrations.restore(img2img)
    assert img2img.text_encoder is stock


def test_negation_text_encoder_for_from_pretrained(tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = tiny_sd_pipeline()
    pipe.save_pretrained(tmp_path / "base")
    bundle = tiny_clip(64, seed=3)
    encoder = negation_text_encoder(bundle, like=pipe.text_encoder.config, tokenizer=pipe.tokenizer)
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "base", text_encoder=encoder, safety_checker=None)
    assert loaded.text_encoder is encoder
    assert_states_equal(prompt_embeds(loaded), open_clip_token_states(bundle, PROMPTS))


def test_width_mismatch_is_a_clear_error():
    pipe = tiny_sd_pipeline(cross_attention_dim=64)
    stock = pipe.text_encoder
    with pytest.raises(integrations.IncompatibleEncoderError, match=r"text width is 32 .* needs 64.*cross-attention"):
        negation_plugins.apply(pipe, tiny_clip(32))
    assert pipe.text_encoder is stock


def test_tokenizer_mismatch_is_a_clear_error():
    from transformers import CLIPTokenizer

    pipe = tiny_sd_pipeline()
    vocab = {"a</w>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}
    pipe.tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    with pytest.raises(integrations.IncompatibleEncoderError, match="tokenizer gives ids"):
        negation_plugins.apply(pipe, tiny_clip(64))


def test_dtype_follows_the_pipeline():
    pipe = tiny_sd_pipeline()
    pipe.text_encoder.to(torch.bfloat16)
    negation_plugins.apply(pipe, tiny_clip(64))
    assert pipe.text_encoder.dtype == torch.bfloat16


def test_sdxl_swap_each_encoder_pooled_output_used():
    pipe = tiny_sdxl_pipeline(width_1=32, width_2=48, projection_dim=24)
    stock_1, stock_2 = pipe.text_encoder, pipe.text_encoder_2
    small, big = tiny_clip(32, seed=4), tiny_clip(48, embed_dim=24, seed=5)

    negation_plugins.apply(pipe, small)  # fits text_encoder only
    assert pipe.text_encoder is not stock_1 and pipe.text_encoder_2 is stock_2
    negation_plugins.apply(pipe, big)  # fits text_encoder_2 only
    assert pipe.text_encoder_2 is not stock_2

    embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False)
    ids = big.tokenizer(PROMPTS)
    with torch.no_grad():
        expected_pooled = big.model.encode_text(ids)
    torch.testing.assert_close(pooled, expected_pooled, atol=1e-5, rtol=0)
    assert embeds.shape[-1] == 32 + 48
    images = pipe(PROMPTS[0], num_inference_steps=2, height=32, width=32, output_type="np").images
    assert images.shape == (1, 32, 32, 3)

    integrations.restore(pipe, slots=("text_encoder",))
    assert pipe.text_encoder is stock_1 and pipe.text_encoder_2 is not stock_2
    integrations.restore(pipe)
    assert pipe.text_encoder_2 is stock_2


def test_sdxl_mapping_and_ambiguity_and_refusal():
    pipe = tiny_sdxl_pipeline(width_1=32, width_2=32, projection_dim=32)
    with pytest.raises(ValueError, match="fits both"):
        negation_plugins.apply(pipe, tiny_clip(32))
    negation_plugins.apply(pipe, {"text_encoder": tiny_clip(32, seed=1), "text_encoder_2": tiny_clip(32, seed=2)})
    assert set(pipe.stock_text_encoders) == {"text_encoder", "text_encoder_2"}
    with pytest.raises(integrations.IncompatibleEncoderError, match="text_encoder_2"):
        negation_plugins.apply(pipe, tiny_clip(64))
    with pytest.raises(integrations.IncompatibleEncoderError, match="projection"):
        negation_plugins.apply(pipe, tiny_clip(32, embed_dim=16), slot="text_encoder_2")


def test_apply_names_registered_integrations_for_unknown_targets():
    with pytest.raises(TypeError, match="diffusers-sd"):
        negation_plugins.apply(object(), "anything")


def test_transformers_folder_and_open_clip_folder_sources(tmp_path):
    from negation_plugins.convert import save_open_clip, save_transformers

    bundle = tiny_clip(64, seed=6)
    save_transformers(bundle, tmp_path / "hf", kind="text")
    save_open_clip(bundle, tmp_path / "oc")
    expected = open_clip_token_states(bundle, PROMPTS)
    for source in (
        str(tmp_path / "hf"),
        f"local-dir:{tmp_path / 'oc'}",
        tmp_path / "oc",
    ):  # last: a trainer output folder
        pipe = tiny_sd_pipeline()
        negation_plugins.apply(pipe, source)
        assert_states_equal(prompt_embeds(pipe), expected)
    encoder = negation_text_encoder(str(tmp_path / "hf"), like=pipe)
    assert encoder.config.hidden_size == 64
