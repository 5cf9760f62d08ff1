"""The llm negator against a real loopback OpenAI-compatible server and a tiny random-init local causal LM."""

import inspect
import json
import math
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from negation_plugins.cli import cli
from negation_plugins.data.io import CaptionItem, read_negation_records
from negation_plugins.data.language import mention_pattern
from negation_plugins.data.llm import LlmError, LlmNegator, parse_caption, parse_object, retry_after_seconds
from negation_plugins.lexicon import count_negations
from negation_plugins.testing import stop_generate_midway
from negation_plugins.testing.chat_server import ChatServer
from tests.test_data_io import _coco


@pytest.fixture
def chat_server(request):
    with ChatServer(request.param) as server:
        yield server


def _run(tmp_path, url, *extra):
    captions, instances, images = _coco(tmp_path)
    out = tmp_path / "out.jsonl"
    args = ["generate", "--no-progress", "--captions", str(captions), "--instances", str(instances), "--images",
            str(images), "--out", str(out), "--negator", "llm", "--negator-option", f"url={url}",
            "--negator-option", "retries=1", *extra]  # fmt: skip
    return CliRunner().invoke(cli, args), out


@pytest.mark.parametrize("chat_server", ["good"], indirect=True)
def test_server_pipeline_writes_llm_captions(tmp_path, chat_server):
    result, out = _run(tmp_path, chat_server.url)
    assert result.exit_code == 0, result.output
    records = {(r.kind, r.image): r for r in read_negation_records(out)}
    assert records["absence", "a.png"].negated_caption == "a dog on a couch without any umbrella."
    assert records["absence", "a.png"].objects == ["umbrella"] and records["absence", "a.png"].verifier == "annotations"
    assert records["presence", "b.png"].negated_caption == "A picture with no cat."
    summary = json.loads(result.output.splitlines()[-1])
    assert summary["negator_llm_object"] == 2 and summary["negator_llm_caption"] == 4
    path, body = chat_server.requests[-1]
    assert path == "/v1/chat/completions" and body["messages"][0]["role"] == "system"
    assert [m["role"] for m in body["messages"][1:]] == ["user", "assistant", "user", "assistant", "user"]


@pytest.mark.parametrize("chat_server", ["garbage"], indirect=True)
def test_garbage_answers_fall_back_to_rules_and_are_counted(tmp_path, chat_server):
    result, out = _run(tmp_path, chat_server.url)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.splitlines()[-1])
    assert summary["negator_fallback_object"] == 2 and summary["negator_fallback_caption"] == 4
    for record in read_negation_records(out):
        assert len(mention_pattern(record.objects[0]).findall(record.negated_caption)) == 1


@pytest.mark.parametrize("chat_server", ["broken"], indirect=True)
def test_broken_server_is_retried_then_a_clear_error_and_no_output(tmp_path, chat_server):
    result, out = _run(tmp_path, chat_server.url)
    assert result.exit_code != 0
    assert "not an OpenAI chat completion response" in result.output and "after 2 attempt(s)" in result.output
    assert len(chat_server.requests) >= 2
    assert not out.exists() and not list(tmp_path.glob("out.jsonl*"))


def test_server_down(tmp_path):
    server = ChatServer("good")
    url = server.url
    server.server_close()  # nothing listens on that port any more
    result, _ = _run(tmp_path, url)
    assert result.exit_code != 0 and "cannot connect" in result.output and url in result.output
    assert not list(tmp_path.glob("out.jsonl*"))


def test_parsers():
    assert parse_object("An Umbrella.\n", "a dog on a couch") == "umbrella"
    assert parse_object("Object: traffic light", "a car") == "traffic light"
    assert parse_object("dog", "two dogs on a couch") is None  # already in the caption
    assert parse_object("I think it could be a big red umbrella", "a dog") is None
    assert parse_caption('"A dog on a couch, without a cat."', "cat", "A dog on a couch.", "absence")
    assert parse_caption("A dog on a couch.", "cat", "A dog on a couch.", "absence") is None
    assert parse_caption("A dog and a cat on a couch.", "cat", "A dog on a couch.", "absence") is None  # no cue
    assert parse_caption("No cat, no cat.", "cat", "A dog.", "absence") is None


def test_tiny_local_causal_lm_batched_with_chat_template(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from negation_plugins.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    negator = LlmNegator(model=str(tmp_path / "lm"), batch_size=2, max_new_tokens=6)
    items = [CaptionItem(f"{i}.png", c, objects=("dog",)) for i, c in
             enumerate(["a dog on a couch.", "a dog in a park.", "a dog and a ball."])]  # fmt: skip
    import random

    rng = random.Random(0)
    candidates = negator.propose(items, ["cat", "kite", "car", "dog"], rng)
    assert negator.stats["llm_object"] + negator.stats["fallback_object"] == 3
    texts = negator.rewrite(items, [c[0] for c in candidates], "absence", rng)
    assert negator.stats["llm_caption"] + negator.stats["fallback_caption"] == 3
    for item, cands, text in zip(items, candidates, texts):
        assert text is not None and count_negations(text) == count_negations(item.caption) + 1
        assert "dog" not in cands
    # Batched left-padded greedy generation answers each prompt as if it were alone.
    negator = LlmNegator(model=str(tmp_path / "lm"), batch_size=2, max_new_tokens=6, temperature=0)
    conversations = [
        [{"role": "user", "content": "hello there"}],
        [{"role": "user", "content": "a much longer prompt " * 5}],
    ]
    assert negator.chat(conversations) == [negator.chat([c])[0] for c in conversations]
    expected = ("cuda:0", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
    assert (negator.device, negator.model.dtype) == expected  # picked automatically
    half = LlmNegator(model=str(tmp_path / "lm"), batch_size=2, max_new_tokens=3, device="cpu", dtype="bfloat16")
    assert half.model.dtype == torch.bfloat16 and len(half.chat(conversations)) == 2
    with pytest.raises(ValueError, match="negator 'llm': dtype must be a torch dtype name"):
        LlmNegator(model=str(tmp_path / "lm"), dtype="half-ish")
    with pytest.raises(ValueError, match="exactly one of model="):
        LlmNegator()
    with pytest.raises(LlmError, match="cannot connect"):
        LlmNegator(url="http://127.0.0.1:9", retries=0).chat([[{"role": "user", "content": "x"}]])


def _captions(tmp_path, n):
    """n captions of two images (with instances), so each needs three requests: object, absence, presence."""
    annotations = [{"id": 100 + i, "image_id": 1 + i % 2,
                    "caption": f"a dog on couch {i}." if i % 2 == 0 else f"a cat and laptop {i}."} for i in range(n)]  # fmt: skip
    return _coco(tmp_path, annotations=annotations)


def _generate_llm(inputs, url, out, *options, args=()):
    captions, instances, images = inputs
    args = ["generate", *args, "--no-progress", "--captions", str(captions), "--instances", str(instances), "--images",
            str(images), "--out", str(out), "--negator", "llm", "--negator-option", f"url={url}", "--chunk-size", "4"]  # fmt: skip
    for option in options:
        args += ["--negator-option", option]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output.splitlines()[-1])


def test_defaults_keep_many_requests_in_flight_and_retry_for_minutes():
    defaults = {k: p.default for k, p in inspect.signature(LlmNegator).parameters.items()}
    assert defaults["concurrency"] >= 64 and defaults["retry_seconds"] >= 120


def test_requests_go_out_concurrently_and_output_equals_a_sequential_run(tmp_path):
    inputs = _captions(tmp_path, 48)
    with ChatServer(latency=0.3) as server:
        summary = _generate_llm(inputs, server.url, tmp_path / "concurrent.jsonl")  # default concurrency
        assert server.max_in_flight >= 32, server.max_in_flight
        assert len(server.requests) == 3 * 48 and summary["seconds"] < 0.3 * 3 * 48 / 8
        server.latency = 0.0
        _generate_llm(inputs, server.url, tmp_path / "sequential.jsonl", "concurrency=1")
        assert server.max_in_flight >= 32
    assert summary["absence"] == summary["presence"] == 48 and summary["negator_llm_caption"] == 96
    assert summary["fallbacks"] == 0 and "fallbacks_file" not in summary
    concurrent = (tmp_path / "concurrent.jsonl").read_bytes()
    assert concurrent == (tmp_path / "sequential.jsonl").read_bytes()
    assert [r.image_id for r in read_negation_records(tmp_path / "concurrent.jsonl")][:4] == [1, 1, 2, 2]


def test_outage_with_retry_after_then_recovery_loses_no_record(tmp_path):
    inputs = _captions(tmp_path, 8)
    with ChatServer() as server:
        _generate_llm(inputs, server.url, tmp_path / "reference.jsonl")
    with ChatServer(outage=2.5, retry_after="1") as server:  # e.g. vLLM still loading its weights
        started = time.monotonic()
        summary = _generate_llm(inputs, server.url, tmp_path / "out.jsonl")  # default retry budget
        assert time.monotonic() - started >= 2.5
    assert server.refused > 0 and summary["negator_server_retries"] == server.refused
    # Retry-After: 1 honoured: each of the 8 first requests is refused at most ~3 times in 2.5 s.
    assert server.refused <= 8 * 4
    assert summary["fallbacks"] == 0 and not (tmp_path / "out.jsonl.fallbacks.jsonl").exists()
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "reference.jsonl").read_bytes()


def test_server_that_never_recovers_falls_back_counts_and_lists_every_step(tmp_path):
    inputs = _captions(tmp_path, 6)
    out = tmp_path / "out.jsonl"
    with ChatServer(outage=math.inf, retry_after="1") as server:
        summary = _generate_llm(inputs, server.url, out, "retry_seconds=1.5")
    assert summary["fallbacks"] == 6 * 3 and summary["negator_server_gave_up"] == 6 * 3
    assert summary["absence"] == summary["presence"] == 6  # every record still written, by the template rules
    listed = [json.loads(line) for line in Path(summary["fallbacks_file"]).read_text().splitlines()]
    assert [(x["index"], x["step"]) for x in listed] == [
        (i, step) for i in range(6) for step in ("object", "absence", "presence")
    ]
    assert all("HTTP 503" in x["error"] and "gave up after" in x["error"] for x in listed)
    assert listed[1]["caption"] == "a dog on couch 0." and listed[3]["image"] == "b.png"
    assert sorted(p.name for p in tmp_path.glob("out.jsonl*")) == ["out.jsonl", "out.jsonl.fallbacks.jsonl"]
    for record in read_negation_records(out):
        assert len(mention_pattern(record.objects[0]).findall(record.negated_caption)) == 1


def test_retry_after_header_forms():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 20))
    assert 15 < retry_after_seconds(future) <= 20


@pytest.mark.e2e
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_concurrent_run_killed_and_resumed_writes_the_same_bytes(tmp_path, stop):
    inputs = _captions(tmp_path, 40)
    captions, instances, images = inputs
    with ChatServer() as server:
        _generate_llm(inputs, server.url, tmp_path / "reference.jsonl", "concurrency=4")
        out = tmp_path / "resumed.jsonl"
        server.latency = 0.4  # 10 chunks take seconds: a loaded machine still stops the run midway
        args = ["--no-progress", "--captions", str(captions), "--instances", str(instances), "--images", str(images),
                "--negator", "llm", "--negator-option", f"url={server.url}", "--negator-option", "concurrency=4",
                "--chunk-size", "4"]  # fmt: skip
        # Ctrl-C: the waiting caption tasks are cancelled, not awaited (the child must exit within 30 s)
        done = stop_generate_midway(args, out, after_chunks=2, stop=stop)
        assert 0 < done < 10 and not out.exists()
        summary = _generate_llm(inputs, server.url, out, "concurrency=4")
    assert summary["resumed_from_chunk"] >= done
    assert out.read_bytes() == (tmp_path / "reference.jsonl").read_bytes()
    assert sorted(p.name for p in tmp_path.glob("resumed.jsonl*")) == ["resumed.jsonl"]


def test_llm_shards_merged_equal_the_unsharded_run(tmp_path):
    inputs = _captions(tmp_path, 10)
    parts = [tmp_path / f"part{i}.jsonl" for i in range(3)]
    with ChatServer() as server:
        _generate_llm(inputs, server.url, tmp_path / "all.jsonl")
        for i, part in enumerate(parts):
            # one shard per machine may be placed differently: concurrency does not change what is written
            _generate_llm(inputs, server.url, part, f"concurrency={8 * (i + 1)}", args=("--shard", f"{i}/3"))
    result = CliRunner().invoke(cli, ["generate", "merge", *map(str, parts), "--out", str(tmp_path / "merged.jsonl")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "merged.jsonl").read_bytes() == (tmp_path / "all.jsonl").read_bytes()


def test_caption_tasks_share_the_verifier_in_batches(tmp_path):
    from negation_plugins.data.generate import generate
    from negation_plugins.data.io import read_captions
    from negation_plugins.data.verifiers import AnnotationVerifier

    class SlowRecordingVerifier(AnnotationVerifier):
        """Ground truth that takes 50 ms per call (like a GPU batch) and records its batch sizes."""

        def __init__(self):
            super().__init__()
            self.sizes = []

        def _absent(self, items, objects):
            self.sizes.append(len(items))
            time.sleep(0.05)
            return super()._absent(items, objects)

    caption_set = read_captions(*_captions(tmp_path, 32))
    verifiers = {}
    with ChatServer(latency=0.1) as server:
        for concurrency in (32, 1):
            verifiers[concurrency] = SlowRecordingVerifier()
            generate(caption_set, tmp_path / f"c{concurrency}.jsonl", LlmNegator(url=server.url, concurrency=concurrency),
                     verifiers[concurrency], vocabulary=["dog", "couch", "cat"], progress=False)  # fmt: skip
            server.latency = 0.0
    assert sum(verifiers[32].sizes) == sum(verifiers[1].sizes) == 32
    assert max(verifiers[32].sizes) >= 8 and set(verifiers[1].sizes) == {1}
    assert (tmp_path / "c32.jsonl").read_bytes() == (tmp_path / "c1.jsonl").read_bytes()


def test_server_restart_after_it_answered_is_waited_out():
    user = [{"role": "user", "content": "Name ONE random everyday physical object."}]
    with ChatServer() as first:
        negator = LlmNegator(url=first.url, retry_seconds=30)
        assert negator.chat([user]) == ["An umbrella."]
        port = first.server_address[1]
    restarted = []

    def restart_later():  # until then nothing listens on the port: connections are refused
        time.sleep(1.0)
        restarted.append(ChatServer(port=port).__enter__())

    threading.Thread(target=restart_later, daemon=True).start()
    assert negator.chat([user]) == ["An umbrella."]
    restarted[0].__exit__()
    assert negator.stats["server_retries"] >= 1 and len(restarted[0].requests) == 1


def test_one_refused_request_falls_back_for_that_caption_only(tmp_path):
    annotations = [{"id": 100 + i, "image_id": 1, "caption": c}
                   for i, c in enumerate(["a dog on a couch.", "a dog on a couch again.", "an enormous dog."])]  # fmt: skip
    inputs = _coco(tmp_path, annotations=annotations)
    with ChatServer() as server:
        summary = _generate_llm(inputs, server.url, tmp_path / "out.jsonl", "concurrency=1")
    listed = [json.loads(line) for line in Path(summary["fallbacks_file"]).read_text().splitlines()]
    assert [(x["index"], x["step"]) for x in listed] == [(2, "object"), (2, "absence"), (2, "presence")]
    assert all("HTTP 400" in x["error"] and "request refused" in x["error"] for x in listed)
    assert summary["absence"] == summary["presence"] == 3 and summary["negator_llm_caption"] == 4
