"""Absence verifiers: ground truth, and real tiny transformers/open_clip models built from configs."""

import pytest
import torch
from PIL import Image

from negation_plugins import plugins
from negation_plugins.data.io import CaptionItem, DataError, read_coco_captions


def _items(tmp_path, n=4):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    items = []
    for i in range(n):
        Image.new("RGB", (40, 30), ((60 * i) % 255, 100, 200 - 40 * i)).save(images / f"{i}.png")
        items.append(CaptionItem(f"{i}.png", "a shape.", image_id=i, objects=("circle",)))
    return images, items


def test_annotations_verifier_uses_ground_truth_and_counts(world_coco):
    verifier = plugins.get_one("verifiers", "annotations")()
    items = read_coco_captions(world_coco.captions, world_coco.instances).items[:50]
    present = [item.objects[0] for item in items]
    assert verifier.absent(items, present) == [False] * 50
    absent = [next(c for c in ("circle", "square", "star", "ring") if c not in item.objects) for item in items]
    assert verifier.absent(items, absent) == [True] * 50
    assert verifier.stats == {"checked": 100, "rejected": 50}
    with pytest.raises(DataError, match="needs object annotations"):
        verifier.absent([CaptionItem("x.png", "a dog")], ["cat"])


def test_detector_verifier_with_tiny_owlvit(tmp_path):
    from negation_plugins.testing import tiny_owlvit

    folder = tmp_path / "owlvit"
    model, processor = tiny_owlvit(intermediate_size=37)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    images, items = _items(tmp_path)
    verifier = plugins.get_one("verifiers", "detector")(images=images, model=str(folder), batch_size=3)
    scores = verifier.scores(items, ["dog", "cat", "umbrella", "dog"])
    assert len(scores) == 4 and all(0 < s < 1 for s in scores)
    verifier.threshold = sorted(scores)[2]
    assert verifier.absent(items, ["dog", "cat", "umbrella", "dog"]) == [s < verifier.threshold for s in scores]
    assert verifier.stats == {"checked": 4, "rejected": 2}
    with pytest.raises(ValueError, match="give the image folder"):
        plugins.get_one("verifiers", "detector")(model=str(folder))


def _tiny_vilt(tmp_path, answer_bias):
    from transformers import (
        BertTokenizerFast,
        ViltConfig,
        ViltForQuestionAnswering,
        ViltImageProcessor,
        ViltProcessor,
    )

    torch.manual_seed(0)
    vocab = tmp_path / "vocab.txt"
    words = "is there a an in this image ? answer yes or no . dog cat umbrella"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words.split()]) + "\n")
    config = ViltConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                        image_size=32, patch_size=16, max_image_length=-1, vocab_size=30, num_labels=2,
                        id2label={0: "yes", 1: "no"}, label2id={"yes": 0, "no": 1}, max_position_embeddings=40)  # fmt: skip
    model = ViltForQuestionAnswering(config)
    with torch.no_grad():
        model.classifier[-1].bias.copy_(torch.tensor(answer_bias))
    folder = tmp_path / "vilt"
    model.save_pretrained(folder)
    processor = ViltProcessor(ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=16),
                              BertTokenizerFast(vocab_file=str(vocab)))  # fmt: skip
    processor.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("bias, expected", [([50.0, 0.0], False), ([0.0, 50.0], True)])
def test_vqa_verifier_keeps_only_when_the_answer_is_not_yes(tmp_path, bias, expected):
    folder = _tiny_vilt(tmp_path, bias)
    images, items = _items(tmp_path, 3)
    verifier = plugins.get_one("verifiers", "vqa")(images=images, model=str(folder), batch_size=2)
    assert verifier.answers(items, ["dog", "cat", "umbrella"]) == ["yes" if not expected else "no"] * 3
    assert verifier.absent(items, ["dog", "cat", "umbrella"]) == [expected] * 3


def test_clip_verifier_scores_against_the_vocabulary(tmp_path):
    from negation_plugins.factory import load_clip
    from negation_plugins.testing import tiny_model_dir
    from trainers.pretrain_world import PretrainConfig

    model_cfg = PretrainConfig(text_layers=1, vision_layers=1).model_cfg(32)
    spec = tiny_model_dir(tmp_path / "clip", model_cfg=model_cfg)
    images, items = _items(tmp_path, 5)
    shapes = ["circle", "square", "triangle", "star"]
    objects = ["square", "umbrella", "star", "circle", "triangle"]  # 'umbrella' joins the compared names
    small = plugins.get_one("verifiers", "clip")(images=images, model=spec, threshold=0.2, batch_size=2)
    small.set_vocabulary(shapes)
    probabilities = small.probabilities(items, objects)
    # Independently: softmax over the prompts of vocabulary + extra objects, read at each item's object.
    clip = load_clip(spec)
    names = shapes + ["umbrella"]
    text = clip.encode_text([f"a photo of {'an' if n[0] in 'aeiou' else 'a'} {n}." for n in names])
    image = clip.encode_image([Image.open(images / item.image).convert("RGB") for item in items])
    expected = (clip.logit_scale * image @ text.T).softmax(-1)
    assert probabilities == pytest.approx([expected[r, names.index(o)].item() for r, o in enumerate(objects)], abs=1e-5)
    small.threshold = sorted(probabilities)[2]
    assert small.absent(items, objects) == [p < small.threshold for p in probabilities]
    assert small.stats["rejected"] == 3


def test_vqa_verifier_generative_tiny_llava_with_chat_template(tmp_path):
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from negation_plugins.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = (
        "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=32, patch_size=16, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
    )  # fmt: skip
    LlavaForConditionalGeneration(config).save_pretrained(tmp_path / "llava")
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=16, chat_template=template,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1).save_pretrained(
        tmp_path / "llava")  # fmt: skip
    images, items = _items(tmp_path, 3)
    verifier = plugins.get_one("verifiers", "vqa")(images=images, model=str(tmp_path / "llava"), batch_size=2,
                                                   max_new_tokens=3)  # fmt: skip
    assert not verifier.classifier
    assert "<image>" in verifier._prompt("Is there a dog in this image?")
    answers = verifier.answers(items, ["dog", "cat", "umbrella"])
    assert len(answers) == 3 and all(isinstance(a, str) and a for a in answers)
    # Left padding: a batch of questions of different lengths answers each as if it were asked alone.
    assert verifier.processor.tokenizer.padding_side == "left"
    assert answers == [verifier.answers([item], [obj])[0] for item, obj in zip(items, ["dog", "cat", "umbrella"])]
    assert verifier.absent(items, ["dog", "cat", "umbrella"]) == ["yes" not in a.lower() for a in answers]


def test_verdict_cache_answers_reruns_without_asking(tmp_path):
    folder = _tiny_vilt(tmp_path, [0.0, 50.0])
    images, items = _items(tmp_path, 5)
    cache = tmp_path / "cache" / "verdicts.sqlite"
    vqa = plugins.get_one("verifiers", "vqa")
    objects = ["dog", "cat", "umbrella", "dog", "cat"]
    first = vqa(images=images, model=str(folder), batch_size=2, cache=str(cache))
    assert first.absent(items[:3], objects[:3]) == [True] * 3
    assert first.stats == {"checked": 3, "cached": 0, "rejected": 0}
    again = vqa(images=images, model=str(folder), batch_size=2, cache=str(cache))  # a rerun: a new process
    assert again.absent(items, objects) == [True] * 5
    assert again.stats == {"checked": 5, "cached": 3, "rejected": 0}  # only the two new pairs were asked
    assert again.absent(items, objects) == [True] * 5 and again.stats["cached"] == 8
    other = vqa(images=images, model=str(folder), question="Do you see {a}?", cache=str(cache))
    other.absent(items[:1], objects[:1])
    assert other.stats["cached"] == 0  # another question is another verifier
    (tmp_path / "bad.sqlite").write_text("not a database at all, certainly not sqlite" * 10)  # moved aside, not used
    assert vqa(images=images, model=str(folder), cache=str(tmp_path / "bad.sqlite")).absent(items[:1], ["dog"]) == [
        True
    ]
    assert len(list(tmp_path.glob("bad.sqlite.corrupt-*"))) == 1


def test_generate_reruns_ask_the_verifier_nothing(tmp_path):
    import json

    from click.testing import CliRunner

    from negation_plugins.cli import cli
    from tests.test_data_io import _coco

    captions, _, images = _coco(tmp_path)
    folder = _tiny_vilt(tmp_path, [0.0, 50.0])
    args = ["generate", "--no-progress", "--captions", str(captions), "--images", str(images), "--out",
            str(tmp_path / "out.jsonl"), "--verifier", "vqa", "--verifier-option", f"model={folder}"]  # fmt: skip
    summaries = []
    for extra in ([], ["--overwrite"]):
        result = CliRunner().invoke(cli, args + extra)
        assert result.exit_code == 0, result.output
        summaries.append(json.loads(next(ln for ln in reversed(result.output.splitlines()) if ln.startswith("{"))))
    assert summaries[0]["verifier_checked"] == 2 and summaries[0]["verifier_cached"] == 0
    assert summaries[1]["verifier_checked"] == summaries[1]["verifier_cached"] == 2
    assert (tmp_path / "out.jsonl.verdicts.sqlite").exists()


def test_model_verifiers_pick_device_and_dtype_and_decode_in_workers(tmp_path):
    folder = _tiny_vilt(tmp_path, [0.0, 50.0])
    images, items = _items(tmp_path, 5)
    vqa = plugins.get_one("verifiers", "vqa")
    auto = vqa(images=images, model=str(folder), batch_size=2, workers=2)
    expected = ("cuda:0", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
    assert (auto.device, auto.dtype, next(auto.model.parameters()).dtype) == (*expected, expected[1])
    batches = [(list(batch), len(images)) for batch, images in auto.image_batches(items)]
    assert batches == [([0, 1], 2), ([2, 3], 2), ([4], 1)]  # in order, through 2 worker processes
    assert auto.absent(items, ["dog"] * 5) == [True] * 5
    half = vqa(images=images, model=str(folder), batch_size=2, device="cpu", dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16 and half.absent(items, ["dog"] * 5) == [True] * 5
    with pytest.raises(ValueError, match="verifier 'vqa': dtype must be a torch dtype name"):
        vqa(images=images, model=str(folder), dtype="float99")
    (images / "3.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"3\.png: cannot read image: .*\(verifier 'vqa'\)"):
        auto.absent(items, ["cat"] * 5)
