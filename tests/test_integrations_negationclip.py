"""A NegationCLIP-layout checkpoint (OpenAI state dict, ViT-L/14 text shapes) goes into an SD 1.x-shaped pipeline."""

import open_clip
import pytest
import torch

import negation_plugins
from negation_plugins.testing import tiny_sd_pipeline, tokenizer
from tests.test_integrations_helpers import PROMPTS


def openai_checkpoint(path, embed_dim: int, width: int, heads: int, layers: int):
    """A NegationCLIP-style .pth (OpenAI key layout, quick_gelu) with the given text tower and a tiny vision tower."""
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=embed_dim,
        vision_cfg={"layers": 1, "width": 64, "head_width": 64, "patch_size": 16, "image_size": 32},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": width, "heads": heads, "layers": layers},
        quick_gelu=True,
    ).eval()
    torch.save(model.state_dict(), path)
    return model


@pytest.mark.e2e
def test_negationclip_pth_at_vit_l14_text_into_sd1_pipeline_in_one_call(tmp_path):
    # ViT-L/14 text tower (768 wide, 12 layers, 12 heads, 77 tokens), random weights
    path = tmp_path / "negationclip_ViT-L14.pth"
    model = openai_checkpoint(path, embed_dim=768, width=768, heads=12, layers=12)

    pipe = tiny_sd_pipeline(cross_attention_dim=768)
    negation_plugins.apply(pipe, str(path))

    embeds, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
    ids = open_clip.get_tokenizer("ViT-L-14")(PROMPTS)
    with torch.no_grad():
        x = model.token_embedding(ids) + model.positional_embedding
        expected = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    lengths = [
        int((row == 49407).nonzero()[0]) + 1
        for row in tokenizer()(PROMPTS, padding="max_length", return_tensors="pt").input_ids
    ]
    for i, length in enumerate(lengths):
        torch.testing.assert_close(embeds[i, :length], expected[i, :length], atol=1e-4, rtol=0)
    assert pipe.text_encoder.config.num_hidden_layers == 12 and pipe.text_encoder.config.hidden_act == "quick_gelu"
    assert pipe(PROMPTS[0], num_inference_steps=1, height=32, width=32, output_type="np").images.shape == (1, 32, 32, 3)


def test_vit_b32_width_into_sd1_width_fails_clearly(tmp_path):
    path = tmp_path / "negationclip_ViT-B32.pth"
    openai_checkpoint(path, embed_dim=64, width=512, heads=8, layers=1)
    pipe = tiny_sd_pipeline(cross_attention_dim=768)
    with pytest.raises(ValueError, match=r"negationclip_ViT-B32.pth.*text width is 512 but .* needs 768"):
        negation_plugins.apply(pipe, str(path))
