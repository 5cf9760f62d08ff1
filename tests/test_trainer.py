"""Trainer: config parsing, tuning modes, batches, bad configs failing before training, outputs and the
diffusers LoRA export (loaded by diffusers itself)."""

from __future__ import annotations

import json
import logging
import re

import open_clip
import pytest
import torch

from negation_plugins.losses import Example, negbench, parse_objectives
from negation_plugins.testing import TINY_CFG, tiny_model_dir
from tests.test_trainer_support import write_records
from trainers import batches
from trainers.config import ConfigError, TrainConfig, parse_config, parse_tuning
from trainers.finetune import train
from trainers.tuning import apply_tuning, lora_target_regex, word_token_ids


def tiny_clip(seed=0):
    torch.manual_seed(seed)
    return open_clip.CLIP(**TINY_CFG)


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def records(world_coco, tmp_path_factory):
    path = tmp_path_factory.mktemp("records") / "records.jsonl"
    write_records(world_coco, path, limit=600)
    return path


def base_args(spec, records, world, out, *extra):
    return [
        "--model",
        spec,
        "--train",
        str(records),
        "--images",
        str(world.images),
        "--output",
        str(out),
        "--batch-size",
        "8",
        "--max-steps",
        "2",
        "--eval-every",
        "2",
        "--no-progress",
        "--log-with",
        "none",
        "--no-export-transformers",
        *extra,
    ]


# ---- configuration ---------------------------------------------------------------------------------------------


def test_flags_override_yaml_and_yaml_overrides_defaults(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("lr: 0.5\nbatch-size: 7\nobjective: tng\ntuning: front:0-1\n")
    config = parse_config(
        [
            "--config",
            str(config_file),
            "--batch-size",
            "3",
            "--objective",
            "omni",
            "--objective",
            "clip:0.5",
            "--no-cache-image-features",
        ]
    )
    assert config.lr == 0.5 and config.batch_size == 3
    assert config.objective == ["omni", "clip:0.5"] and config.tuning == "front:0-1"
    assert config.cache_image_features is False
    assert parse_config([]).objective == TrainConfig().objective and parse_config([]).tuning == "full"


def test_yaml_with_unknown_setting_is_refused(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("learning_rate: 1\n")
    with pytest.raises(ConfigError, match="unknown setting.*learning_rate"):
        parse_config(["--config", str(config_file)])


@pytest.mark.parametrize(
    "text,expected", [("full", ("full", None)), ("lora", ("lora", None)), ("front:0-5", ("front", (0, 5)))]
)
def test_parse_tuning(text, expected):
    assert parse_tuning(text) == expected


@pytest.mark.parametrize("text", ["front:3-1", "front", "partial", "front:a-b"])
def test_parse_tuning_rejects(text):
    with pytest.raises(ConfigError):
        parse_tuning(text)


# ---- tuning modes ----------------------------------------------------------------------------------------------


def test_full_tuning_trains_the_whole_text_tower_and_nothing_visual():
    model, names = apply_tuning(tiny_clip(), "full")
    assert not any(n.startswith("visual.") for n in names)
    for expected in (
        "token_embedding.weight",
        "positional_embedding",
        "ln_final.weight",
        "text_projection",
        "logit_scale",
        "transformer.resblocks.1.mlp.c_proj.weight",
    ):
        assert expected in names
    assert all(p.requires_grad == (n in names) for n, p in model.named_parameters())


def test_front_tuning_trains_only_the_slice_plus_embeddings():
    _, names = apply_tuning(tiny_clip(), "front:0-0")
    assert any(n.startswith("transformer.resblocks.0.") for n in names)
    assert not any(n.startswith("transformer.resblocks.1.") for n in names)
    assert "token_embedding.weight" in names and "text_projection" in names


def test_front_range_outside_the_layer_count_fails():
    with pytest.raises(ConfigError, match="2 layers .*layer 5 does not exist"):
        apply_tuning(tiny_clip(), "front:0-5")


def test_lora_adapts_text_attention_and_mlp_only_and_changes_outputs():
    base = tiny_clip()
    tokens = open_clip.get_tokenizer("RN50")(["a red circle but no star"])[:, :32]
    before = base.encode_text(tokens).detach().clone()
    model, names = apply_tuning(base, "lora", lora_rank=4, lora_alpha=8)
    assert names and all("lora_" in n for n in names)
    assert not any(".visual." in n for n in names)
    assert any(".attn.lora_A" in n for n in names) and any("attn.base_layer.out_proj.lora_A" in n for n in names)
    assert any("mlp.c_fc.lora_A" in n for n in names) and any("mlp.c_proj.lora_B" in n for n in names)
    for name, param in model.named_parameters():  # lora_B starts at 0: move it so the adapters act
        if "lora_B" in name:
            param.data.normal_(0, 0.1)
    after = model.base_model.model.encode_text(tokens)
    assert not torch.allclose(before, after)


def test_lora_regex_stays_in_the_text_tower():
    regex = lora_target_regex(tiny_clip(), "attn")
    assert re.fullmatch(regex, "transformer.resblocks.3.attn")
    assert not re.fullmatch(regex, "visual.transformer.resblocks.3.attn")
    assert not re.fullmatch(regex, "transformer.resblocks.3.attn.out_proj")


def test_lora_targets_matching_nothing_fail_with_examples():
    with pytest.raises(ConfigError, match="matches no module.*transformer.resblocks.0"):
        apply_tuning(tiny_clip(), "lora", lora_targets="q_proj")


def test_lora_trainable_tokens_move_only_the_rows_of_named_words_in_the_text():
    """peft's trainable tokens: "sans" (in the text) learns, "bereft" (named, not in the text) and every other
    word keep their rows; merging gives the model the peft wrapper computed."""
    tokenizer = open_clip.get_tokenizer("RN50")
    assert word_token_ids(tokenizer, ["sans", "bereft", "sans"]) == sorted(
        set(tokenizer.encode("sans") + tokenizer.encode("bereft"))
    )
    assert len(tokenizer.encode("bereft")) == 2  # a word of two BPE pieces: both rows are named
    base = tiny_clip()
    before = base.token_embedding.weight.detach().clone()
    model, names = apply_tuning(
        base, "lora", lora_rank=4, lora_alpha=8, lora_token_ids=word_token_ids(tokenizer, ["sans", "bereft"])
    )
    assert any("token_embedding" in n and "trainable_tokens_delta" in n for n in names)
    tokens = tokenizer(["a red star sans circles"])[:, :32]
    params = [p for p in model.parameters() if p.requires_grad]
    model.base_model.model.encode_text(tokens).square().sum().backward()
    torch.optim.SGD(params, lr=1.0).step()
    with torch.no_grad():
        wrapped = model.base_model.model.encode_text(tokens)
        merged = model.merge_and_unload()
        moved = (merged.token_embedding.weight != before).any(dim=1).nonzero().flatten().tolist()
        assert moved == tokenizer.encode("sans")
        torch.testing.assert_close(merged.encode_text(tokens), wrapped)


def test_lora_trainable_tokens_need_lora_and_a_word(tiny_spec, records, world_coco, tmp_path):
    from negation_plugins.lexicon import NEGATION_WORDS
    from trainers.config import NEGATION_TOKENS, lora_token_words

    out = tmp_path / "o"
    for extra, match in (
        (("--lora-trainable-tokens", "sans"), "--lora-trainable-tokens applies to --tuning lora; --tuning full"),
        (("--tuning", "lora", "--lora-trainable-tokens", " , "), "--lora-trainable-tokens ' , ' names no word"),
    ):
        _fails_before_training(base_args(tiny_spec, records, world_coco, out, *extra), match, out)
    config = TrainConfig(tuning="lora", lora_trainable_tokens=NEGATION_TOKENS)
    assert lora_token_words(config) == sorted(NEGATION_WORDS) and "sans" in lora_token_words(config)
    assert lora_token_words(TrainConfig(lora_trainable_tokens="sans, bereft")) == ["sans", "bereft"]


# ---- batches ---------------------------------------------------------------------------------------------------


def test_records_of_one_caption_are_grouped_and_split_by_image():
    rows = [
        {
            "image": "a.png",
            "caption": "a star",
            "negated_caption": "a star but no box",
            "objects": ["box"],
            "kind": "absence",
        },
        {
            "image": "a.png",
            "caption": "a star",
            "negated_caption": "a box but no star",
            "objects": ["star"],
            "kind": "presence",
        },
        {
            "image": "b.png",
            "caption": "a box",
            "negated_caption": "a box but no star",
            "objects": ["star"],
            "kind": "absence",
        },
    ]
    examples = batches.group_records(rows, "mem")
    assert len(examples) == 2
    assert examples[0].absence == ["a star but no box"] and examples[0].presence == ["a box but no star"]
    usable, dropped = batches.usable_examples(examples, parse_objectives(["conclip"]).batch_keys, "mem")
    assert [e.image for e in usable] == ["a.png"] and dropped == 1
    train_set, val_set = batches.split_by_image(examples, 0.5, seed=0)
    assert {e.image for e in train_set}.isdisjoint({e.image for e in val_set}) and len(val_set) == 1


def test_batch_plan_is_deterministic_sharded_and_covers_each_epoch():
    plan = batches.BatchPlan(10, 2, world_size=2, seed=3)
    first_epoch = [i for g in range(3) for r in (0, 1) for i in plan.indices(g, r)][:10]
    assert sorted(first_epoch) == list(range(10))
    assert plan.indices(1, 0) != plan.indices(1, 1)
    assert batches.BatchPlan(10, 2, 2, 3).indices(7, 1) == plan.indices(7, 1)


def test_mcq_options_hold_one_true_caption():
    example = Example("a.png", "a star", absence=["a star, no box"], presence=["a box but no star"])
    other = Example("b.png", "a box", absence=["a box but no moon"])
    options, answer = negbench.mcq_options(example, __import__("random").Random(0), [example, other])
    assert len(options) == 4 and options[answer] == "a star, no box" and "a box but no star" in options


def test_affirmation_questions_swap_a_present_object_for_an_absent_one():
    """NegBench's affirmation type: the true caption against copies that name an absent object instead of a present
    one; negation questions then carry one such swap (it affirms what the true caption negates)."""
    example = Example(
        "a.png",
        "a red cross and a star.",
        absence=["a red cross and a star, but no ring."],
        presence=["a star, but no cross."],
        absent_objects=["ring", "arrow"],
        present_objects=["cross", "star"],
    )
    other = Example("b.png", "a ring.", presence=["no ring here."])
    random = __import__("random")
    kinds = set()
    for seed in range(40):
        options, answer = negbench.mcq_options(example, random.Random(seed), [example, other], affirmation_share=0.5)
        assert len(set(options)) == 4
        if options[answer] == example.caption:
            kinds.add("affirmation")
            assert all(o in negbench._swaps(example, random.Random(0)) for i, o in enumerate(options) if i != answer)
        else:
            kinds.add("negation")
            assert options[answer] == example.absence[0] and "a star, but no cross." in options
            assert any(
                o.startswith(("a red ring", "a red arrow")) or o.endswith(("a ring.", "an arrow.")) for o in options
            )
    assert kinds == {"affirmation", "negation"}
    # share 0 keeps the old draw exactly
    assert negbench.mcq_options(example, random.Random(3), [example, other]) == negbench.mcq_options(
        example, random.Random(3), [example, other], affirmation_share=0.0
    )


def test_scope_swap_puts_a_present_object_under_the_true_captions_negation():
    """The scope-swap distractor is the true caption word for word with its negated (absent) object replaced by an
    object of the image the caption does not mention (learned from any caption's presence records of that image)."""
    records = [
        {
            "image": "a.png",
            "caption": "a red cross, a star and a moon.",
            "negated_caption": "a red cross and a star, lacking any rings.",
            "objects": ["ring"],
            "kind": "absence",
        },
        {
            "image": "a.png",
            "caption": "a red cross, a star and a moon.",
            "negated_caption": "a star and a moon, but no cross.",
            "objects": ["cross"],
            "kind": "presence",
        },
        {
            "image": "a.png",
            "caption": "a moon beside a star.",
            "negated_caption": "a star, but no moon.",
            "objects": ["moon"],
            "kind": "presence",
        },
        {
            "image": "b.png",
            "caption": "a ring.",
            "negated_caption": "no ring here.",
            "objects": ["ring"],
            "kind": "presence",
        },
    ]
    example, _, other = batches.group_records(records, "mem")
    assert example.image_objects == ["cross", "moon"] and other.image_objects == ["ring"]
    random = __import__("random")
    for seed in range(10):
        options, answer = negbench.mcq_options(example, random.Random(seed), [example, other], scope_swap=True)
        assert options[answer] == "a red cross and a star, lacking any rings."
        assert "a red cross and a star, lacking any moons." in options and len(set(options)) == 4
    # nothing to swap in when the caption mentions every object of the image: the usual draw
    alone = Example("c.png", "a moon.", absence=["a moon, no star."], absent_objects=["star"])
    alone.image_objects = ["moon"]
    assert negbench.mcq_options(alone, random.Random(1), [alone, other], scope_swap=True) == negbench.mcq_options(
        alone, random.Random(1), [alone, other]
    )


# ---- bad configs fail before training --------------------------------------------------------------------------


def _fails_before_training(args, match, out):
    with pytest.raises((ConfigError, ValueError), match=match):
        train(parse_config(args))
    assert not (out / "metrics.jsonl").exists() and not (out / "open_clip_model.safetensors").exists()


def test_unknown_objective_fails_before_training(tiny_spec, records, world_coco, tmp_path):
    out = tmp_path / "o"
    _fails_before_training(
        base_args(tiny_spec, records, world_coco, out, "--objective", "nope"), "unknown objective 'nope'", out
    )


def test_lora_targets_matching_nothing_fail_before_training(tiny_spec, records, world_coco, tmp_path):
    out = tmp_path / "o"
    _fails_before_training(
        base_args(tiny_spec, records, world_coco, out, "--tuning", "lora", "--lora-targets", "q_proj"),
        "matches no module",
        out,
    )


def test_front_range_fails_before_training(tiny_spec, records, world_coco, tmp_path):
    out = tmp_path / "o"
    _fails_before_training(
        base_args(tiny_spec, records, world_coco, out, "--tuning", "front:0-2"), "layer 2 does not exist", out
    )


def test_empty_train_file_fails_before_training(tiny_spec, world_coco, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "o"
    _fails_before_training(base_args(tiny_spec, empty, world_coco, out), "is empty", out)


def test_model_tokenizer_mismatch_fails_before_training(records, world_coco, tmp_path):
    small_vocab = tiny_model_dir(tmp_path / "small", vocab_size=1000)
    out = tmp_path / "o"
    _fails_before_training(base_args(small_vocab, records, world_coco, out), "vocabulary has only 1000", out)


def test_objective_needing_missing_negation_kind_fails(tiny_spec, world_coco, tmp_path):
    only_absence = tmp_path / "absence.jsonl"
    only_absence.write_text(
        json.dumps(
            {
                "image": "000001.png",
                "caption": "a star",
                "negated_caption": "a star, no box",
                "objects": ["box"],
                "kind": "absence",
            }
        )
        + "\n"
    )
    out = tmp_path / "o"
    _fails_before_training(
        base_args(tiny_spec, only_absence, world_coco, out, "--objective", "omni"), "presence-negated", out
    )


# ---- a short run and its outputs -------------------------------------------------------------------------------


def test_lora_run_writes_every_output_and_an_exact_diffusers_lora(tiny_spec, records, world_coco, tmp_path):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    from negation_plugins import load_clip
    from negation_plugins.convert import open_clip_to_transformers

    out = tmp_path / "run"
    args = base_args(
        tiny_spec,
        records,
        world_coco,
        out,
        "--tuning",
        "lora",
        "--lr",
        "0.05",
        "--lora-rank",
        "4",
        "--eval-mcq",
        str(world_coco.mcq_csv),
    )
    args[args.index("--no-export-transformers")] = "--export-transformers"
    summary = train(parse_config(args))

    assert summary["steps"] == 2 and "mcq" in summary["results_before"] and "mcq" in summary["results_after"]
    for name in (
        "open_clip_config.json",
        "open_clip_model.safetensors",
        "README.md",
        "results.json",
        "metrics.jsonl",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "pytorch_lora_weights.safetensors",
        "transformers/config.json",
        "text_encoder/config.json",
    ):
        assert (out / name).is_file(), name
    assert "## Results" in (out / "README.md").read_text()
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tuned = load_clip(f"local-dir:{out}")
    tokens = tuned.tokenize(["a red star but no blue circle", "a box"])

    # base text encoder + the diffusers LoRA file, loaded by diffusers, == the merged fine-tuned text encoder
    base = load_clip(tiny_spec)
    text_encoder = open_clip_to_transformers(base.model, "text")
    state, alphas, metadata = StableDiffusionPipeline.lora_state_dict(
        str(out / "pytorch_lora_weights.safetensors"), return_lora_metadata=True
    )
    StableDiffusionPipeline.load_lora_into_text_encoder(
        state, network_alphas=alphas, text_encoder=text_encoder, metadata=metadata
    )
    hf_ids = tokens.clone()
    with torch.no_grad():
        with_lora = text_encoder(input_ids=hf_ids).last_hidden_state
        merged = CLIPTextModel.from_pretrained(out / "text_encoder")(input_ids=hf_ids).last_hidden_state
        unchanged = open_clip_to_transformers(base.model, "text")(input_ids=hf_ids).last_hidden_state
    assert torch.allclose(with_lora, merged, atol=1e-4)
    assert not torch.allclose(unchanged, merged, atol=1e-4)
    assert torch.allclose(model.encode_text(tokens), tuned.model.encode_text(tokens))


def test_lora_run_with_trainable_tokens_merges_them_and_writes_no_diffusers_file(
    tiny_spec, records, world_coco, tmp_path, caplog
):
    """The merged model carries the learned rows; a diffusers LoRA file cannot, so it is not written (logged), and
    putting the adapter into a pipeline fails naming its config."""
    from safetensors.torch import load_file

    from integrations.lora import AdapterError, read_peft_adapter
    from negation_plugins import load_clip

    out = tmp_path / "run"
    words = ["no", "without", "lacks"]  # "lacks" is a held-out cue: never in the records, its row must stay
    args = base_args(tiny_spec, records, world_coco, out, "--tuning", "lora", "--lr", "0.05")
    train(parse_config([*args, "--lora-trainable-tokens", ",".join(words)]))

    assert (out / "adapter/adapter_model.safetensors").is_file()
    assert not (out / "pytorch_lora_weights.safetensors").exists()
    assert "pytorch_lora_weights.safetensors not written" in caplog.text and "trainable_token_indices" in caplog.text
    with pytest.raises(AdapterError, match=r"adapter_config.json: the adapter also trains token-embedding rows"):
        read_peft_adapter(out / "adapter")
    base = load_clip(tiny_spec).model.token_embedding.weight
    tuned = load_file(str(out / "open_clip_model.safetensors"))["token_embedding.weight"]
    moved = set((tuned != base).any(dim=1).nonzero().flatten().tolist())
    tokenizer = open_clip.get_tokenizer("RN50")
    assert moved and moved <= set(word_token_ids(tokenizer, words))  # no other word's row moves
    assert not moved & set(tokenizer.encode("lacks"))  # named, never seen: AdamW leaves it (no decay on embeddings)


@pytest.mark.parametrize("objectives", [["conclip"], ["tng"], ["clip:0.99", "negbench-mcq:0.01"]])
def test_every_batch_kind_builds_for_train_and_validation(objectives, tiny_spec, records, world_coco, tmp_path):
    """Distractor images, on-the-fly TNG texts and MCQ options are drawn from the right split's pool."""
    spec_args = [a for o in objectives for a in ("--objective", o)]
    summary = train(
        parse_config(base_args(tiny_spec, records, world_coco, tmp_path / "o", *spec_args, "--val-fraction", "0.3"))
    )
    assert summary["steps"] == 2 and summary["results_after"]["validation"]["loss"] > 0


def test_mcq_settings_without_an_mcq_objective_are_reported(tiny_spec, records, world_coco, tmp_path, caplog):
    args = base_args(tiny_spec, records, world_coco, tmp_path / "o", "--objective", "conclip", "--mcq-scope-swap")
    train(parse_config(args))
    assert "--mcq-scope-swap changes nothing: no objective of conclip asks MCQ questions" in caplog.text


def test_bf16_with_gradient_accumulation_trains_full_tower(tiny_spec, records, world_coco, tmp_path):
    """Mixed precision + 2 micro-batches per optimizer step: one logged step per optimizer step, finite losses,
    and the weights move."""
    from safetensors.torch import load_file

    out = tmp_path / "acc"
    args = base_args(
        tiny_spec,
        records,
        world_coco,
        out,
        "--gradient-accumulation-steps",
        "2",
        "--val-fraction",
        "0",
        "--tuning",
        "full",
        "--mixed-precision",
        "bf16",
        "--lr",
        "0.01",
    )
    summary = train(parse_config(args))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and summary["steps"] == 2
    assert all(r["loss"] == r["loss"] and r["loss"] < 100 for r in lines)
    before = load_file(tiny_spec.removeprefix("local-dir:") + "/open_clip_model.safetensors")
    after = load_file(str(out / "open_clip_model.safetensors"))
    assert not torch.equal(
        before["transformer.resblocks.0.attn.in_proj_weight"], after["transformer.resblocks.0.attn.in_proj_weight"]
    )
    assert torch.equal(before["visual.conv1.weight"], after["visual.conv1.weight"])


def test_coco_captions_train_on_the_fly_and_are_refused_without_it(tiny_spec, world_coco, tmp_path):
    """COCO captions + instances with --negation on-the-fly train TNG-CLIP's triplets; the same file in records
    mode fails before training and says what to do."""
    common = [
        "--model",
        tiny_spec,
        "--train",
        str(world_coco.captions),
        "--images",
        str(world_coco.images),
        "--batch-size",
        "8",
        "--max-steps",
        "2",
        "--no-progress",
        "--log-with",
        "none",
        "--no-export-transformers",
        "--objective",
        "tng",
    ]
    summary = train(
        parse_config(
            [
                *common,
                "--output",
                str(tmp_path / "otf"),
                "--negation",
                "on-the-fly",
                "--instances",
                str(world_coco.instances),
            ]
        )
    )
    assert summary["steps"] == 2 and summary["results_after"]["validation"]["loss"] > 0
    with pytest.raises(ValueError, match="without negated captions.*on-the-fly"):
        train(parse_config([*common, "--output", str(tmp_path / "rec")]))


# ---- in-training MCQ: affirmation, negation and hybrid apart; a warning when affirmation falls ----------------


def test_eval_mcq_reports_each_question_type_and_warns_when_affirmation_falls(
    tiny_spec, records, world_coco, tmp_path, caplog
):
    from trainers.finetune import affirmation_drop

    assert affirmation_drop({"affirmation": 0.9}, {"affirmation": 0.86}, 5) is None  # within 0.05
    warning = affirmation_drop({"affirmation": 0.9}, {"affirmation": 0.8}, 5)
    assert warning.startswith("step 5: --eval-mcq affirmation accuracy 0.8 is more than 0.05 below its 0.9")
    assert affirmation_drop({}, {"affirmation": 0.1}, 5) is None

    caplog.set_level(logging.INFO, logger="trainers.finetune")
    out = tmp_path / "o"
    mcq = ("--eval-mcq", str(world_coco.mcq_csv), "--eval-mcq-images", str(world_coco.images), "--eval-every", "1")
    mcq += ("--eval-mcq-max-rows", "60")
    summary = train(parse_config(base_args(tiny_spec, records, world_coco, out, *mcq, "--lr", "0.05")))
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for record in [summary["results_before"]["mcq"], summary["results_after"]["mcq"]]:
        assert all(
            record[f"n_{kind}"] > 0 and record[kind] is not None for kind in ("affirmation", "negation", "hybrid")
        )
    assert all({"mcq/affirmation", "mcq/negation", "mcq/hybrid"} <= set(s) for s in steps)
    assert "step 2 --eval-mcq: affirmation" in caplog.text
    before = summary["results_before"]["mcq"]["affirmation"]
    dropped = [s["step"] for s in steps if s["mcq/affirmation"] < before - 0.05]
    assert [w.split(":")[0] for w in summary["warnings"]] == [f"step {s}" for s in dropped]
    assert json.loads((out / "results.json").read_text())["warnings"] == summary["warnings"]
