"""CLIPSeg: swapped text tower gives conditional_embeddings equal to the encoder's projected text features."""

import numpy as np
import pytest
import torch
from PIL import Image

import integrations
import negation_plugins
from integrations.clipseg import conditional_embeddings, miou, segment
from negation_plugins.testing import tiny_clip, tokenizer
from tests.test_integrations_helpers import PROMPTS


def tiny_clipseg(projection_dim=32, text_width=48):
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    torch.manual_seed(0)
    config = CLIPSegConfig(
        text_config={
            "hidden_size": text_width,
            "intermediate_size": 4 * text_width,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
        },
        projection_dim=projection_dim,
        extract_layers=(0, 1),
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    return CLIPSegForImageSegmentation(config).eval()


def test_clipseg_swap_conditional_embeddings_equal_projected_text_features():
    model = tiny_clipseg(projection_dim=32, text_width=48)
    stock_embeds = conditional_embeddings(model, tokenizer(), PROMPTS)
    bundle = tiny_clip(64, embed_dim=32, layers=2)  # different width and depth than the stock tower: rebuilt

    assert negation_plugins.apply(model, bundle, tokenizer=tokenizer()) is model

    with torch.no_grad():
        expected = bundle.model.encode_text(bundle.tokenizer(PROMPTS))
    torch.testing.assert_close(conditional_embeddings(model, tokenizer(), PROMPTS), expected, atol=1e-5, rtol=0)

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    mask = segment(model, tokenizer(), image, "a dog without a leash")
    assert mask.shape == (40, 50) and float(mask.min()) >= 0 and float(mask.max()) <= 1

    integrations.restore(model)
    torch.testing.assert_close(conditional_embeddings(model, tokenizer(), PROMPTS), stock_embeds)


def test_clipseg_projection_mismatch_is_clear():
    model = tiny_clipseg(projection_dim=32)
    with pytest.raises(
        integrations.IncompatibleEncoderError, match=r"16-d pooled embeddings but .* needs 32-d.*decoder"
    ):
        negation_plugins.apply(model, tiny_clip(64, embed_dim=16))


def test_miou():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[:, :2] = True
    assert miou([a], [a]) == 1.0
    assert miou([a, a], [b, a]) == pytest.approx((4 / 12 + 1) / 2)
    assert miou([torch.tensor(a, dtype=torch.float32) * 0.9], [a]) == 1.0  # probabilities are thresholded
    assert miou([np.zeros((2, 2))], [np.zeros((2, 2))]) == 1.0
    with pytest.raises(ValueError, match="mask 0 is"):
        miou([a], [np.zeros((3, 3))])
    with pytest.raises(ValueError, match="1 predicted masks but 2"):
        miou([a], [a, a])
