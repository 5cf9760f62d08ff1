"""The llm negator against a real loopback OpenAI-compatible server and a tiny random-init local causal LM."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from click.testing import CliRunner

from negation_plugins.cli import cli
from negation_plugins.data.io import CaptionItem, read_negation_records
from negation_plugins.data.language import mention_pattern
from negation_plugins.data.llm import LlmError, LlmNegator, parse_caption, parse_object
from negation_plugins.lexicon import count_negations
from tests.test_data_io import _coco


class ChatServer(ThreadingHTTPServer):
    """Speaks /v1/chat/completions. ``behaviour``: 'good' (a rule-following 'model'), 'garbage' (chatty answers
    that do not follow instructions), 'broken' (HTTP 200 with a non-JSON body)."""

    def __init__(self, behaviour):
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.behaviour, self.requests = behaviour, []

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class ChatHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        if self.server.behaviour == "broken":
            return self._send(b"<html>upstream error</html>")
        prompt = body["messages"][-1]["content"]
        garbage = self.server.behaviour == "garbage"
        if "Name ONE" in prompt:
            answer = "Well, I would say that maybe it's an umbrella!" if garbage else "An umbrella."
        else:
            caption, obj = re.search(r'Caption: "(.*)"\nObject: (.*)\n', prompt).groups()
            if garbage:
                answer = "Sure! Here is your caption."
            elif "remove every other mention" in prompt:
                answer = f"A picture with no {obj}."
            else:
                answer = f"{caption.rstrip('.')} without any {obj}."
        reply = {"id": "x", "object": "chat.completion", "model": body["model"],
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]}  # fmt: skip
        self._send(json.dumps(reply).encode())

    def _send(self, data):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def chat_server(request):
    server = ChatServer(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


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
    with pytest.raises(ValueError, match="exactly one of model="):
        LlmNegator()
    with pytest.raises(LlmError, match="cannot connect"):
        LlmNegator(url="http://127.0.0.1:9", retries=0).chat([[{"role": "user", "content": "x"}]])
