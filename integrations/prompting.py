"""Negation-aware prompting (off by default): move "without X" / "no X" / "not a X" into the negative prompt.

Even a negation-aware text encoder conditions a diffusion model on every noun it reads, so "a street without
cars" still pulls cars into the picture. Classifier-free guidance already has a slot for what must not
appear, the negative prompt::

    routed = route_negations("a street without cars, at night")
    routed.prompt            # "a street, at night"
    routed.negative_prompt   # "cars"
    pipe(**routed.pipeline_kwargs())

Rules (:func:`negation_plugins.lexicon.split_negations`, shared with the span-subtraction correction): a cue
from :mod:`negation_plugins.lexicon` that negates the phrase after it, verbs aside (today
``without``, ``no``, ``not``, ``never``, ``nor``, ``lacking``, ``with no``, ``free of``, ``devoid of``, ``minus``,
``sans``, ``excluding``, ``in the absence of``, ... and the exclusion ``except``; ``not`` also eats a following a/an/any/the/one), is followed by the
negated phrase: the words up to a comma or other punctuation, a connective (and/but/or/
while/that/which/who/...) or a preposition (in/on/at/near/with/...). "and" continues the phrase
("without cars and trucks") unless it starts a new noun phrase ("without cars and a red bus"). Phrases are
exact substrings of the prompt.

Limits (documented, on purpose): it reads surface words only, so double negation ("not without"),
scope over clauses ("a dog that is not sleeping" routes "sleeping"), negated attributes ("a car that is
not red" routes "red") and negations spelled as verbs ("lacks", "missing", "empty of") are not understood;
contractions ("isn't", "aren't") are not cues. Use it for object absence, where it helps most.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from negation_plugins.lexicon import split_negations


@dataclass
class RoutedPrompt:
    """The rewritten prompt, the phrases moved out of it, and the negative prompt to pass along."""

    prompt: str
    negated: list[str] = field(default_factory=list)
    negative_prompt: str | None = None

    def pipeline_kwargs(self) -> dict:
        return {"prompt": self.prompt, "negative_prompt": self.negative_prompt}


def route_negations(prompt: str, negative_prompt: str | None = None) -> RoutedPrompt:
    """Move explicit negations into the negative prompt (appended to any ``negative_prompt`` given)."""
    rest, negated = split_negations(prompt)
    if not negated:
        return RoutedPrompt(prompt=prompt, negated=[], negative_prompt=negative_prompt)
    parts = ([negative_prompt] if negative_prompt else []) + negated
    return RoutedPrompt(prompt=rest, negated=negated, negative_prompt=", ".join(parts))
