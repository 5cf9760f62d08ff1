"""Negation data: read captions, negate them (negators), check absence (verifiers), generate records offline
(``negclip generate``) or per batch inside training (:class:`~negation_plugins.data.onthefly.OnTheFlyNegation`).

Record schema (JSONL, one per line): ``image``, ``image_id``, ``caption``, ``negated_caption``, ``objects``,
``kind`` (``absence``: still true; ``presence``: now false), ``negator``, ``verifier``.
"""
