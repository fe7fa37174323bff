"""Edit prompts: each request rendered in its plain form and after fixed context prefixes.

Keys and target values are averaged over these variants (as in ROME/MEMIT) so the edit holds in
slightly different contexts. The prefixes are fixed, not sampled, so results are reproducible.
Each variant records the token index of the edit key and of the last prompt token.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..prompts import render_prompt
from ..storage import UniEraseError

CONTEXT_PREFIXES = [
    "Quick question. ",
    "I was wondering about something. ",
    "Please answer briefly. ",
    "Here is what I want to know. ",
    "Tell me this. ",
]


NEUTRAL_TEMPLATES = [
    "Tell me about {}.",
    "What do you know about {}?",
    "Write one sentence about {}.",
    "Is {} well known?",
]
"""Relation-neutral questions about an entity (see ``editor.neutral_prompts``)."""


@dataclass
class EditPrompt:
    """One rendered prompt variant of one request."""

    request_index: int
    variant: int  # 0 = plain, 1.. = prefixed
    input_ids: list[int]
    key_index: int  # token index whose MLP input is the edit key
    question_span: tuple[int, int]  # token indices [start, end) covering the question text


def _token_spans(tokenizer, text: str):
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _token_at_char(offsets, char_end: int) -> int:
    """Index of the token containing character ``char_end - 1``."""
    target = char_end - 1
    for i, (start, end) in enumerate(offsets):
        if start <= target < end:
            return i
    raise UniEraseError("could not map a character position to a token")


def render_variants(tokenizer, question: str, *, num_prefixes: int) -> list[tuple[list[int], list[tuple[int, int]], int]]:
    """For each variant: (ids, offsets, char index where the question starts in the text)."""
    out = []
    for v, prefix in enumerate([""] + CONTEXT_PREFIXES[:num_prefixes]):
        text = render_prompt(tokenizer, prefix + question)
        start = text.rfind(prefix + question) + len(prefix)
        ids, offsets = _token_spans(tokenizer, text)
        out.append((ids, offsets, start))
    return out


def build_edit_prompts(tokenizer, question: str, request_index: int, key_char_end: int | None, num_prefixes: int) -> list[EditPrompt]:
    """Variants of one question; ``key_char_end`` is the end of the key token's text inside the question
    (``None`` = the last prompt token)."""
    prompts = []
    for v, (ids, offsets, q_start) in enumerate(render_variants(tokenizer, question, num_prefixes=num_prefixes)):
        q_first = _token_at_char(offsets, q_start + 1)
        q_last = _token_at_char(offsets, q_start + len(question))
        key = len(ids) - 1 if key_char_end is None else _token_at_char(offsets, q_start + key_char_end)
        prompts.append(EditPrompt(request_index, v, ids, key, (q_first, q_last + 1)))
    return prompts


def subject_char_end(question: str, subject: str) -> int:
    """End of the last occurrence of ``subject`` in ``question`` (validated by the request parser)."""
    index = question.rfind(subject)
    if index < 0:
        raise UniEraseError(f"subject {subject!r} does not occur in {question!r}")
    return index + len(subject)
