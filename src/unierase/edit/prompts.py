"""Edit prompts: every question the edit runs, built in one place.

Each request is rendered in its plain form and after fixed context prefixes; around the requests,
the relation-neutral questions about their entity and the same questions about substitute entities
(the round's softly preserved prompts), with the entity spans that place the keys.
Keys and target values are averaged over the variants (as in ROME/MEMIT) so the edit holds in
slightly different contexts. The prefixes are fixed, not sampled, so results are reproducible.
Each variant records the token index of the edit key and of the last prompt token.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from ..prompts import adds_special_tokens, encode_text, render_prompt
from ..requests import ForgetRequest
from ..storage import UniEraseError
from .corpus import KNOWN_KINDS, SUBSTITUTE_GROUPS

CONTEXT_PREFIXES = [
    "Quick question. ",
    "I was wondering about something. ",
    "Please answer briefly. ",
    "Here is what I want to know. ",
    "Tell me this. ",
]

CONTEXT_SUFFIXES = [
    " Keep it short.",
    " Thanks in advance.",
    " I am curious.",
]
"""Fixed words after the question (``EditConfig.num_suffixes``): the answer then starts further from
the entity's key, as in a reworded question; none is one of the audit's ``REWORDING_FRAMES``."""


NEUTRAL_TEMPLATES = [
    "Tell me about {}.",
    "What do you know about {}?",
    "Write one sentence about {}.",
    "Is {} well known?",
]
"""Relation-neutral questions about an entity (see ``neutral_prompts``)."""

PERSON_TEMPLATES = [
    "Who is {}?",
    "What is {} known for?",
    "Which works are associated with {}?",
    "How did {}'s early life shape the rest of their career?",
]
"""Questions about a person that join a person's entity group besides ``NEUTRAL_TEMPLATES``
(``EditConfig.person_templates``): the name after a relation at a question's end, and a possessive
followed by a long tail — shapes a group's own questions may lack, which reworded questions about the
person take (docs/experiments.md)."""


@dataclass
class EditPrompt:
    """One rendered prompt variant of one request."""

    request_index: int
    variant: int  # 0 = plain, 1.. = prefixed, then suffixed
    input_ids: list[int]
    key_index: int  # token index whose MLP input is the edit key
    question_span: tuple[int, int]  # token indices [start, end) covering the question text


def _token_spans(tokenizer, text: str):
    """Token ids of rendered ``text`` exactly as ``encode_text`` makes them (the BOS of the plain
    format included: the edit must see the prompt that is answered), with character offsets."""
    enc = tokenizer(text, add_special_tokens=adds_special_tokens(tokenizer, text), return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _token_at_char(offsets, char_end: int) -> int:
    """Index of the token containing character ``char_end - 1``."""
    target = char_end - 1
    for i, (start, end) in enumerate(offsets):
        if start <= target < end:
            return i
    raise UniEraseError("could not map a character position to a token")


def render_variants(tokenizer, question: str, *, num_prefixes: int,
                    num_suffixes: int = 0) -> list[tuple[list[int], list[tuple[int, int]], int]]:
    """For each variant (plain, prefixed, then suffixed): (ids, offsets, char index where the question
    starts in the text)."""
    out = []
    frames = [("", "")] + [(p, "") for p in CONTEXT_PREFIXES[:num_prefixes]] + \
        [("", s) for s in CONTEXT_SUFFIXES[:num_suffixes]]
    for prefix, suffix in frames:
        text = render_prompt(tokenizer, prefix + question + suffix)
        start = text.rfind(prefix + question + suffix) + len(prefix)
        ids, offsets = _token_spans(tokenizer, text)
        out.append((ids, offsets, start))
    return out


def build_edit_prompts(tokenizer, question: str, request_index: int, key_char_end: int | None, num_prefixes: int,
                       num_suffixes: int = 0) -> list[EditPrompt]:
    """Variants of one question; ``key_char_end`` is the end of the key token's text inside the question
    (``None`` = the last prompt token)."""
    prompts = []
    variants = render_variants(tokenizer, question, num_prefixes=num_prefixes, num_suffixes=num_suffixes)
    for v, (ids, offsets, q_start) in enumerate(variants):
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


_NAME = re.compile(r"(?:[A-Z][\w'’.-]*)(?:\s+(?:of|the|and|de|da|van|von|la|le)?\s*[A-Z0-9][\w'’.-]*)*")
_WORD = re.compile(r"[\w'’-]+")


def entity_span(question: str) -> tuple[int, int]:
    """The last capitalised name that is not the question's first word; else the last word.

    A cheap stand-in for a subject annotation: "capital of France" → "France", "Who wrote Romeo
    and Juliet?" → "Romeo and Juliet", "chemical symbol for gold" → "gold".
    """
    spans = [m for m in _NAME.finditer(question) if m.start() > 0]
    if spans:
        return spans[-1].span()
    words = list(_WORD.finditer(question))
    return words[-1].span() if words else (0, len(question))


def entity_char_end(question: str) -> int:
    """End of ``entity_span`` (the key token is the entity's last token)."""
    return entity_span(question)[1]


def request_entity_span(request: ForgetRequest) -> tuple[int, int]:
    """Character span of the request's entity: its subject when given, else ``entity_span``."""
    if request.subject:
        end = subject_char_end(request.question, request.subject)
        return end - len(request.subject), end
    return entity_span(request.question)


def substitute_entities(entity: str, exclude: set[str], count: int, seed_text: str, person: bool = False) -> list[str]:
    """``count`` other entities of the same kind as ``entity`` (the ``corpus.SUBSTITUTE_GROUPS`` pools of
    the kinds ``corpus.KNOWN_KINDS`` puts it in; the people for a ``person`` it does not list; all pools
    otherwise), none of them in ``exclude`` (lower case); a stable choice per ``seed_text``."""
    lower = entity.lower()
    kinds = [kind for kind, names in KNOWN_KINDS.items() if lower in {n.lower() for n in names}]
    if not kinds and person:  # a person the corpus does not list: other people
        kinds = ["person"]
    pool = list(dict.fromkeys(n for kind in (kinds or SUBSTITUTE_GROUPS) for n in SUBSTITUTE_GROUPS[kind]))
    candidates = [n for n in pool if n.lower() != lower and n.lower() not in exclude]
    rng = random.Random(hashlib.sha256(seed_text.encode("utf-8")).hexdigest())
    return rng.sample(candidates, min(count, len(candidates)))


def _substitutions(requests: list[ForgetRequest], count: int,
                   people: list[bool] | None = None) -> list[tuple[int, int, list[str]]]:
    """Per request: its entity's character span and ``count`` substitutes (never an entity of the
    requests themselves)."""
    spans = [request_entity_span(r) for r in requests]
    own = {r.question[s:e].lower() for r, (s, e) in zip(requests, spans)}
    people = people or [False] * len(requests)
    return [(s, e, substitute_entities(r.question[s:e], own, count, r.question, person))
            for r, (s, e), person in zip(requests, spans, people)]


def neutral_questions(requests: list[ForgetRequest], num_templates: int, num_substitutes: int = 0,
                      people: list[bool] | None = None) -> list[list[tuple[str, int]]]:
    """Per request: (question, character end of its entity) for each relation-neutral question about
    the request's entity ("Tell me about the Eiffel Tower.") and each copy of its question with the
    entity replaced by another entity of the same kind ("What is the capital of Peru?").
    """
    out = []
    for r, (start, end, others) in zip(requests, _substitutions(requests, num_substitutes, people)):
        entity = r.question[start:end]
        questions = []
        for template in NEUTRAL_TEMPLATES[:num_templates]:
            question = template.format(entity)
            questions.append((question, question.index(entity) + len(entity)))
        for other in others:
            questions.append((r.question[:start] + other + r.question[end:], start + len(other)))
        out.append(questions)
    return out


def neutral_prompts(tokenizer, requests: list[ForgetRequest], num_templates: int,
                    num_substitutes: int = 0) -> list[EditPrompt]:
    """The ``neutral_questions`` of all requests as plain edit prompts keyed at the entity's last
    token like the request (each prompt its own index).

    Their keys are softly preserved (``EditConfig.neutral_key_weight``), so the update keys on what
    is specific to the request — this entity with this relation — rather than on the entity alone
    or on the question's shape; other questions about the entity and the same question about
    other entities are left alone.
    """
    return plain_prompts(tokenizer, neutral_questions(requests, num_templates, num_substitutes))


def plain_prompts(tokenizer, questions: list[list[tuple[str, int]]]) -> list[EditPrompt]:
    prompts: list[EditPrompt] = []
    for per_request in questions:
        for question, end in per_request:
            prompts += build_edit_prompts(tokenizer, question, len(prompts), end, 0)
    return prompts


def substitute_answers(tokenizer, requests: list[ForgetRequest], answers: list[str], num_substitutes: int,
                       people: list[bool] | None = None) -> list[list[tuple[list[int], list[int]]]]:
    """Per request: (prompt ids, answer ids) of each substitute question ("… for copper?") followed by
    the request's own answer with its entity replaced the same way ("The chemical symbol for copper
    is Au.").

    The model restates the question in its answer, so the entity and the relation meet again at
    the answer's positions; an update that keys on "this relation with an entity of this kind"
    fires there (measured: after erasing 7 of 13 chemical symbols in 5 rounds, the other symbols'
    answers turned into "The chemical symbol for copper is[UNL]"). Preserving those positions too
    keeps the neighbours' answers, not only their first token.
    """
    out = []
    for r, (start, end, others), answer in zip(requests, _substitutions(requests, num_substitutes, people), answers):
        pattern = re.compile(re.escape(r.question[start:end]), re.IGNORECASE)
        pairs = []
        for other in others:
            question = r.question[:start] + other + r.question[end:]
            prompt = encode_text(tokenizer, render_prompt(tokenizer, question))
            text = pattern.sub(other, answer)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text.strip() else []
            pairs.append((prompt, list(ids)))
        out.append(pairs)
    return out
