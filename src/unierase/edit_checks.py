"""Measurements of one edit: did the targeted questions switch to the unlearning token, and did
everything else stay put? Used by the demo and the edit benchmarks.

Locality as docs/method.md ("Locality of an edit") defines it: teacher-forced agreement with the unedited model on its own
answers, "known facts still answered correctly", and the (brittle) exact match of greedy answers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources

from .generation import (agreement, first_token_ids, generate_answer_ids, greedy_start_from_draft, stop_token_ids,
                         teacher_forced_agreement, teacher_forced_predictions)
from .refusals import is_refusal


def load_demo_facts() -> list[dict]:
    """Built-in real-world facts that SmolLM2-135M-Instruct answers correctly (checked on the model).

    Each row: question, answer (a keyword of the correct answer), subject, relation, role
    ('forget' or 'retain') and, for forget rows, a reworded ``paraphrase``.
    """
    text = resources.files("unierase").joinpath("data/demo_facts.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def answer_matches(generated: str, answer: str) -> bool:
    """Whether the generated text contains the answer keyword (whole word for short keywords)."""
    if len(answer) <= 3:
        return re.search(r"\b" + re.escape(answer) + r"\b", generated, re.IGNORECASE) is not None
    return answer.lower() in generated.lower()


@dataclass
class Snapshot:
    """Greedy answers of one model to a fixed list of questions."""

    questions: list[str]
    answer_ids: list[list[int]]
    texts: list[str]
    first_tokens: list[int]
    drafts: list[list[int] | None] | None = None
    """The draft answers given to ``snapshot`` (``None``: none)."""
    draft_agreement: list[float | None] | None = None
    """Teacher-forced agreement of this model with each draft (``None`` where there was none)."""

    def slice(self, lo: int, hi: int) -> "Snapshot":
        """The answers to questions ``lo`` … ``hi - 1`` (one snapshot often covers several sets)."""
        cut = (lambda values: values[lo:hi] if values is not None else None)
        return Snapshot(self.questions[lo:hi], self.answer_ids[lo:hi], self.texts[lo:hi], self.first_tokens[lo:hi],
                        cut(self.drafts), cut(self.draft_agreement))


def snapshot(model, tokenizer, questions: list[str], *, max_new_tokens: int = 24, batch_size: int = 128,
             drafts: list[list[int] | None] | None = None) -> Snapshot:
    """Greedy answers to ``questions``.

    ``drafts[i]``: an answer to question i the model probably repeats (after an edit: the unedited
    model's). One teacher-forced pass over the drafts gives the agreement with them and each
    answer up to its first disagreement (``greedy_start_from_draft``); only the rest is generated,
    in one batch with the questions without a draft. The answers are the same as without drafts
    (up to float order)."""
    starts: list[list[int]] = [[] for _ in questions]
    complete = [False] * len(questions)
    scores: list[float | None] | None = None
    if drafts is not None:
        rows = [i for i, d in enumerate(drafts) if d is not None]
        predictions = teacher_forced_predictions(model, tokenizer, [questions[i] for i in rows], [drafts[i] for i in rows])
        stops = stop_token_ids(model, tokenizer)
        scores = [None] * len(questions)
        for i, pred in zip(rows, predictions):
            scores[i] = agreement(pred, drafts[i])
            starts[i], complete[i] = greedy_start_from_draft(pred, drafts[i], stops, max_new_tokens)
    todo = [i for i in range(len(questions)) if not complete[i]]
    ids = list(starts)
    for i, answer in zip(todo, generate_answer_ids(model, tokenizer, [questions[i] for i in todo],
                                                   max_new_tokens=max_new_tokens, batch_size=batch_size,
                                                   answer_starts=[starts[i] for i in todo])):
        ids[i] = answer
    texts = [tokenizer.decode(i, skip_special_tokens=True) for i in ids]
    firsts = [i[0] if i else -1 for i in ids]
    return Snapshot(questions, ids, texts, firsts, drafts, scores)


def forget_metrics(after: Snapshot, token_id: int) -> dict:
    """Share of forget questions whose answer starts with [UNL], and share that decode to a refusal."""
    n = len(after.questions)
    return {
        "n": n,
        "starts_with_unl": sum(f == token_id for f in after.first_tokens) / n,
        "refusal": sum(is_refusal(t) for t in after.texts) / n,
    }


def retain_metrics(model, tokenizer, before: Snapshot, after: Snapshot, answers: list[str | None], token_id: int) -> dict:
    """Locality on questions that were not targeted."""
    n = len(before.questions)
    known = [i for i, a in enumerate(answers) if a is not None and answer_matches(before.texts[i], a)]
    still = [i for i in known if answer_matches(after.texts[i], answers[i])]
    if after.drafts == before.answer_ids:  # measured when ``after`` was taken with these drafts
        scores = after.draft_agreement
    else:
        scores = teacher_forced_agreement(model, tokenizer, before.questions, before.answer_ids)
    exact = [a == b for a, b in zip(before.answer_ids, after.answer_ids)]
    return {
        "n": n,
        "starts_with_unl": sum(f == token_id for f in after.first_tokens) / n,
        "known_before": len(known),
        "known_still_correct": len(still) / len(known) if known else None,
        "teacher_forced_agreement": sum(scores) / n,
        "greedy_exact_match": sum(exact) / n,
        "lowest_agreement": sorted(({"question": q, "agreement": round(a, 3)} for q, a in zip(before.questions, scores)),
                                   key=lambda row: row["agreement"])[:8],
        "no_longer_correct": [before.questions[i] for i in known if i not in set(still)],
    }


def extend_answers(model, tokenizer, questions: list[str], answers: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """``answers`` continued greedily to ``max_new_tokens`` tokens (one that already ended stays as it is)."""
    stops = stop_token_ids(model, tokenizer)
    todo = [i for i, a in enumerate(answers) if len(a) < max_new_tokens and not (a and a[-1] in stops)]
    out = [list(a) for a in answers]
    longer = generate_answer_ids(model, tokenizer, [questions[i] for i in todo], max_new_tokens=max_new_tokens,
                                 answer_starts=[answers[i] for i in todo]) if todo else []
    for i, ids in zip(todo, longer):
        out[i] = ids
    return out


def unl_first_rate(model, tokenizer, questions: list[str], token_id: int) -> float:
    firsts = first_token_ids(model, tokenizer, questions)
    return sum(f == token_id for f in firsts) / len(questions)
