"""The ``llm`` negator: NegationCLIP's pipeline with any chat LLM (local transformers model or OpenAI-compatible server).

1. pick an object for each caption: ``contextual`` ("not mentioned, but likely in such a scene") or ``random``;
2. (``negclip generate`` asks the verifier whether it is really absent);
3. rewrite the caption to state the object's absence (two-shot prompt, as NegationCLIP does).

Answers are parsed strictly (a short object name not already in the caption; a rewritten caption that mentions
the object once, adds a negation and fits CLIP's context). An unusable answer falls back to the template rules
and is counted in ``stats`` (``fallback_object``/``fallback_caption``).

Against a server, ``negclip generate`` runs one task per caption with ``concurrency`` requests in flight. Transient
failures (HTTP 408/429/5xx, and lost connections once the server has answered) are retried with jittered
exponential backoff that honours ``Retry-After`` for up to ``retry_seconds``; then (or at once when the server
refuses one request, e.g. a prompt too long, after answering others) :class:`LlmUnavailable` tells the caller to
fall back for that item. A server that never answered or does not speak the protocol is a clear
:class:`LlmError` after ``retries`` attempts. A local transformers model generates in batches (bf16 on CUDA).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ..devices import pick_device
from ..hookspecs import hookimpl
from ..lexicon import count_negations
from .language import mention_pattern, mentions, strip_caption
from .negators import (
    CONTEXT_LENGTH,
    Negator,
    absence_candidates,
    fits_context,
    hybrid,
    presence,
)

SYSTEM = "You edit image captions. Answer with exactly what is asked and nothing else."
OBJECT_PROMPTS = {
    "contextual": 'Image caption: "{caption}"\nName ONE physical object that is NOT mentioned in the caption but '
    "could plausibly appear in such a scene. Answer with the object name only (one or two words).",
    "random": "Name ONE random everyday physical object. Answer with the object name only (one or two words).",
}
REWRITE_SHOTS = (
    ("A woman riding a horse in a field.", "hat", "A woman not wearing a hat riding a horse in a field."),
    ("A kitchen with a stove and a sink.", "refrigerator", "A kitchen with a stove and a sink but no refrigerator."),
)
REWRITE_PROMPT = (
    'Caption: "{caption}"\nObject: {obj}\nRewrite the caption so that it also states that the object is NOT in '
    "the image. Keep everything else. Answer with the rewritten caption only."
)
PRESENCE_PROMPT = (
    'Caption: "{caption}"\nObject: {obj}\nRewrite the caption so that it states that the object is NOT in the '
    "image, and remove every other mention of the object. Answer with the rewritten caption only."
)
_ARTICLE = re.compile(r"^(a|an|the|one|some)\s+", re.IGNORECASE)
_PREFIX = re.compile(r"^(rewritten caption|caption|answer|object)\s*:\s*", re.IGNORECASE)


class LlmError(RuntimeError):
    """The LLM (server) could not be used; the message says which and why."""


class LlmUnavailable(LlmError):
    """The server kept failing transiently for ``retry_seconds``, or refused this one request (HTTP 4xx) after
    answering others: the caller falls back for this item."""


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def parse_object(answer: str, caption: str, known: Sequence[str] = ()) -> str | None:
    """A one- or two-word object name from an answer like 'An umbrella.' -> 'umbrella', else None."""
    line = next((ln for ln in answer.strip().splitlines() if ln.strip()), "")
    line = _PREFIX.sub("", line.strip()).strip(" \"'`*.!,;:").lower()
    line = _ARTICLE.sub("", line)
    if not re.fullmatch(r"[a-z][a-z\-]*( [a-z][a-z\-]*)?", line):
        return None
    if mentions(caption, line) or line in known or count_negations(line):
        return None
    return line


def parse_caption(answer: str, obj: str, caption: str, kind: str, context_length: int = CONTEXT_LENGTH) -> str | None:
    """The rewritten caption if it is usable: one line, mentions ``obj`` exactly once, adds one negation (a
    presence rewrite may have dropped the affirmative mention), fits the context; else None."""
    line = next((ln for ln in answer.strip().splitlines() if ln.strip()), "")
    line = _PREFIX.sub("", line.strip()).strip(" \"'`*")
    if not line or line.strip(".").lower() == strip_caption(caption)[0].lower():
        return None
    if len(mention_pattern(obj).findall(line)) != 1 or count_negations(line) != count_negations(caption) + 1:
        return None
    if kind == "absence" and mentions(caption, obj):
        return None
    return line if fits_context(line, context_length) else None


class LlmNegator(Negator):
    name = "llm"
    description = (
        "NegationCLIP's LLM pipeline (pick an object, rewrite two-shot) via transformers or an OpenAI-compatible server"
    )

    def __init__(self, model: str | None = None, url: str | None = None, api_model: str = "default",
                 api_key: str | None = None, mode: str = "contextual", temperature: float = 0.6, top_p: float = 0.9,
                 max_new_tokens: int = 48, batch_size: int = 8, concurrency: int = 128, retries: int = 3,
                 retry_seconds: float = 300.0, timeout: float = 60.0, seed: int = 0, device: str | None = None,
                 dtype: str | None = None, context_length: int = CONTEXT_LENGTH):  # fmt: skip
        """``batch_size``: prompts per generate() call of a local model. ``concurrency``: requests in flight to a
        server (``negclip generate`` runs that many captions at once). ``retry_seconds``: how long transient server
        failures are retried before an item falls back to the template rules; ``retries``: attempts for a server
        that never answered or answers garbage. ``device``/``dtype``: local model (default CUDA + bf16 when present)."""
        super().__init__(context_length=context_length)
        if (model is None) == (url is None):
            raise ValueError("negator 'llm' needs exactly one of model=<transformers causal LM> or url=<server>")
        if mode not in OBJECT_PROMPTS:
            raise ValueError(f"negator 'llm': mode must be one of {', '.join(OBJECT_PROMPTS)}, got {mode!r}")
        if concurrency < 1 or batch_size < 1:
            raise ValueError(f"negator 'llm': concurrency and batch_size must be >= 1, got {concurrency}, {batch_size}")
        self.mode, self.temperature, self.top_p = mode, temperature, top_p
        self.max_new_tokens, self.batch_size, self.retries, self.timeout = max_new_tokens, batch_size, retries, timeout
        self.retry_seconds, self.seed = retry_seconds, seed
        self.url, self.api_model, self.api_key = url, api_model, api_key
        self.concurrency = concurrency if url is not None else None  # None: generate() batches chunks instead
        self._lock = threading.Lock()  # stats are updated from the request threads
        self._answered = False  # a connection error is transient only once the server has answered
        self._cancelled = threading.Event()
        self._local = threading.local()  # each request thread keeps its own connection alive
        if model is not None:
            self._load_local(model, device, dtype)

    def cancel(self) -> None:
        """Stop waiting: requests in backoff give up at once (the generate loop calls this when it stops)."""
        self._cancelled.set()

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    # ------------------------------------------------------------------------------------------ pipeline steps

    def propose(self, items, vocabulary, rng):
        prompts = [[self._user(OBJECT_PROMPTS[self.mode].format(caption=item.caption))] for item in items]
        answers = self.chat(prompts)
        out = []
        for item, answer in zip(items, answers):
            obj = parse_object(answer, item.caption, item.objects or ())
            if obj is None:
                self._count("fallback_object")
                out.append(absence_candidates(item, vocabulary, rng))
            else:
                self._count("llm_object")
                out.append([obj])
        return out

    def rewrite(self, items, objects, kind, rng):
        self.check_kind(kind)
        template = REWRITE_PROMPT if kind == "absence" else PRESENCE_PROMPT
        conversations = []
        for item, obj in zip(items, objects):
            messages = []
            for caption, shot_obj, rewritten in REWRITE_SHOTS:
                messages += [self._user(REWRITE_PROMPT.format(caption=caption, obj=shot_obj)),
                             {"role": "assistant", "content": rewritten}]  # fmt: skip
            conversations.append(messages + [self._user(template.format(caption=item.caption, obj=obj))])
        out = []
        for item, obj, answer in zip(items, objects, self.chat(conversations)):
            text = parse_caption(answer, obj, item.caption, kind, self.context_length)
            if text is None:
                self._count("fallback_caption")
                if kind == "absence":
                    text = hybrid(item.caption, obj, rng, self.context_length)
                else:
                    text = presence(item.caption, obj, item.objects or (), rng, self.context_length)
            else:
                self._count("llm_caption")
            out.append(text)
        return out

    @staticmethod
    def _user(text: str) -> dict:
        return {"role": "user", "content": text}

    # ------------------------------------------------------------------------------------------------ backends

    def chat(self, conversations: Sequence[list[dict]]) -> list[str]:
        """One answer per conversation (system prompt added here)."""
        conversations = [[{"role": "system", "content": SYSTEM}, *c] for c in conversations]
        if self.url is not None:
            if len(conversations) == 1:  # the generate loop's one-caption tasks
                return [self._post(conversations[0])]
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations) or 1)) as pool:
                return list(pool.map(self._post, conversations))
        answers = []
        for start in range(0, len(conversations), self.batch_size):
            answers.extend(self._generate(conversations[start : start + self.batch_size]))
        return answers

    def _endpoint(self) -> str:
        base = self.url.rstrip("/")
        if base.endswith("/chat/completions"):
            return base
        return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")

    def _post(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.api_model, "messages": messages, "temperature": self.temperature,
                           "top_p": self.top_p, "max_tokens": self.max_new_tokens, "seed": self.seed}).encode()  # fmt: skip
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        started, attempts, hard_failures = time.monotonic(), 0, 0
        jitter = random.Random()  # spreads the retries of many waiting requests (timing only, not the output)
        while True:
            attempts += 1
            wait = None
            try:
                status, reason, response_headers, data = self._exchange(body, headers)
                if status >= 400:
                    problem, transient = f"HTTP {status} {reason}", status in (408, 429) or status >= 500
                    wait = retry_after_seconds(response_headers.get("Retry-After"))
                    if not transient:  # the request itself is wrong: retrying will not help
                        self._count("server_failures")
                        refused = LlmUnavailable if self._answered else LlmError  # this item, or every request
                        raise refused(f"LLM server {self._endpoint()}: {problem} (request refused)")
                else:
                    content = json.loads(data.decode("utf-8"))["choices"][0]["message"]["content"]
                    if not isinstance(content, str):
                        raise TypeError(f"message content is {type(content).__name__}")
                    self._answered = True
                    return content
            except (http.client.HTTPException, OSError) as e:
                problem, transient = f"cannot connect ({e or type(e).__name__})", self._answered
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as e:
                problem, transient = f"not an OpenAI chat completion response ({type(e).__name__}: {e})", False
            backoff = min(30.0, 0.2 * 2 ** min(attempts, 8)) * (0.5 + jitter.random())
            wait = backoff if wait is None else max(wait, 0.05)
            elapsed = time.monotonic() - started
            if not transient:
                hard_failures += 1
                if hard_failures > self.retries:
                    self._count("server_failures")
                    raise LlmError(f"LLM server {self._endpoint()}: {problem} after {attempts} attempt(s)")
                wait = min(wait, 2.0)
            elif elapsed + wait > self.retry_seconds:
                self._count("server_gave_up")
                raise LlmUnavailable(
                    f"LLM server {self._endpoint()}: {problem}; gave up after {attempts} attempt(s) in {elapsed:.1f} s"
                )
            self._count("server_retries")
            if self._cancelled.wait(wait):
                raise LlmError(f"LLM server {self._endpoint()}: cancelled while retrying ({problem})")

    def _exchange(self, body: bytes, headers: dict) -> tuple[int, str, object, bytes]:
        """One POST on this thread's keep-alive connection (reopened once when the server closed it meanwhile)."""
        url = urllib.parse.urlsplit(self._endpoint())
        target = url.path + (f"?{url.query}" if url.query else "")
        while True:
            connection = getattr(self._local, "connection", None)
            reused = connection is not None
            if connection is None:
                kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
                connection = self._local.connection = kind(url.hostname, url.port, timeout=self.timeout)
            try:
                connection.request("POST", target, body, headers)
                response = connection.getresponse()
                data = response.read()
            except (http.client.HTTPException, OSError):
                connection.close()
                self._local.connection = None
                if reused:
                    continue
                raise
            if response.will_close:
                connection.close()
                self._local.connection = None
            return response.status, response.reason, response.headers, data

    def _load_local(self, model: str, device: str | None, dtype: str | None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device, self.dtype = pick_device(device, dtype, "negator 'llm'")
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"  # batched generation continues every prompt at the same position
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=self.dtype).to(self.device).eval()

    def _prompt_text(self, messages: list[dict]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n".join(lines) + "\nAssistant:"

    def _generate(self, conversations: list[list[dict]]) -> list[str]:
        import torch

        texts = [self._prompt_text(c) for c in conversations]
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        torch.manual_seed(self.seed)
        with torch.no_grad():
            generated = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=self.temperature > 0,
                temperature=self.temperature if self.temperature > 0 else None,
                top_p=self.top_p if self.temperature > 0 else None,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return self.tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@hookimpl
def register_negators(register):
    register(LlmNegator)
