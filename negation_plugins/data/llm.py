"""The ``llm`` negator: NegationCLIP's pipeline with any chat LLM (local transformers model or OpenAI-compatible server).

1. pick an object for each caption: ``contextual`` ("not mentioned, but likely in such a scene") or ``random``;
2. (``negclip generate`` asks the verifier whether it is really absent);
3. rewrite the caption to state the object's absence (two-shot prompt, as NegationCLIP does).

Answers are parsed strictly (a short object name not already in the caption; a rewritten caption that mentions
the object once, adds a negation and fits CLIP's context). An unusable answer falls back to the template rules
and is counted in ``stats`` (``fallback_object``/``fallback_caption``). A server that is down or keeps returning
garbage JSON is retried, then a clear :class:`LlmError`.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

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
                 max_new_tokens: int = 48, batch_size: int = 8, retries: int = 3, timeout: float = 60.0,
                 seed: int = 0, device: str = "cpu", context_length: int = CONTEXT_LENGTH):  # fmt: skip
        super().__init__(context_length=context_length)
        if (model is None) == (url is None):
            raise ValueError("negator 'llm' needs exactly one of model=<transformers causal LM> or url=<server>")
        if mode not in OBJECT_PROMPTS:
            raise ValueError(f"negator 'llm': mode must be one of {', '.join(OBJECT_PROMPTS)}, got {mode!r}")
        self.mode, self.temperature, self.top_p = mode, temperature, top_p
        self.max_new_tokens, self.batch_size, self.retries, self.timeout = max_new_tokens, batch_size, retries, timeout
        self.seed, self.device = seed, device
        self.url, self.api_model, self.api_key = url, api_model, api_key
        if model is not None:
            self._load_local(model)

    # ------------------------------------------------------------------------------------------ pipeline steps

    def propose(self, items, vocabulary, rng):
        prompts = [[self._user(OBJECT_PROMPTS[self.mode].format(caption=item.caption))] for item in items]
        answers = self.chat(prompts)
        out = []
        for item, answer in zip(items, answers):
            obj = parse_object(answer, item.caption, item.objects or ())
            if obj is None:
                self.stats["fallback_object"] += 1
                out.append(absence_candidates(item, vocabulary, rng))
            else:
                self.stats["llm_object"] += 1
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
                self.stats["fallback_caption"] += 1
                if kind == "absence":
                    text = hybrid(item.caption, obj, rng, self.context_length)
                else:
                    text = presence(item.caption, obj, item.objects or (), rng, self.context_length)
            else:
                self.stats["llm_caption"] += 1
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
            with ThreadPoolExecutor(max_workers=max(1, self.batch_size)) as pool:
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
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(2.0, 0.1 * 2**attempt))
            request = urllib.request.Request(self._endpoint(), data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                content = payload["choices"][0]["message"]["content"]
                if not isinstance(content, str):
                    raise TypeError(f"message content is {type(content).__name__}")
                return content
            except urllib.error.HTTPError as e:
                problem = f"HTTP {e.code} {e.reason}"
                if 400 <= e.code < 500 and e.code not in (408, 429):
                    break  # the request itself is wrong: retrying will not help
            except (urllib.error.URLError, OSError) as e:
                problem = f"cannot connect ({getattr(e, 'reason', e)})"
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as e:
                problem = f"not an OpenAI chat completion response ({type(e).__name__}: {e})"
        self.stats["server_failures"] += 1
        raise LlmError(f"LLM server {self._endpoint()}: {problem} after {self.retries + 1} attempt(s)")

    def _load_local(self, model: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"  # batched generation continues every prompt at the same position
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model).to(self.device).eval()

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
