"""The calibration pool: generic questions with a keyword answer, of which a model's own known
facts are mined by asking it.

The pool (``data/calibration_pool.jsonl``) shares no question with the demo's facts,
``benchmarks/data/heldout_facts.jsonl`` or any TOFU set (a test checks the first two), so a
recipe calibrated on it is scored on facts it never saw.
"""

from __future__ import annotations

import json
from importlib import resources

from ..edit_checks import answer_matches
from ..generation import generate_answers

POOL_FIELDS = ("question", "answer", "subject", "relation", "paraphrase")


def load_pool() -> list[dict]:
    """The packaged calibration pool: rows with ``POOL_FIELDS``."""
    text = resources.files("unierase").joinpath("data/calibration_pool.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def known_facts(model, tokenizer, rows: list[dict], *, max_new_tokens: int = 24) -> list[dict]:
    """The rows whose answer keyword the model's greedy answer contains (each with its ``base_answer``)."""
    answers = generate_answers(model, tokenizer, [r["question"] for r in rows], max_new_tokens=max_new_tokens)
    return [dict(r, base_answer=a) for r, a in zip(rows, answers) if answer_matches(a, r["answer"])]


def split_facts(known: list[dict], forget: int, neighbours: int) -> tuple[list[dict], list[dict]]:
    """(facts to erase, neighbours to keep): the erased facts every other one of ``in_turn``, so
    every kind of question is edited; the neighbours the rest, so every kind is checked. At most a
    third of the known facts are erased, so a model that knows few keeps two neighbours per erased
    fact (locality is the figure that needs them). Deterministic: the pool's order decides."""
    order = in_turn(known)
    erased = order[::2][:min(forget, len(known) // 3)]
    taken = {id(r) for r in erased}
    return erased, [r for r in order if id(r) not in taken][:neighbours]


def in_turn(rows: list[dict]) -> list[dict]:
    """``rows`` reordered to take one of each relation in turn (first of each, then second…)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["relation"], []).append(row)
    out, index = [], 0
    while any(index < len(g) for g in groups.values()):
        out += [g[index] for g in groups.values() if index < len(g)]
        index += 1
    return out
