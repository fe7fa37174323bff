"""Measure the unlearning token's universality on questions it was not trained on."""

from __future__ import annotations

from ..generation import first_token_ids, generate_answer_ids
from ..prompts import end_of_turn_id
from ..refusals import is_refusal


def token_universality(model, tokenizer, token_id: int, questions: list[str], *, max_new_tokens: int = 24,
                       batch_size: int = 32) -> dict:
    """With ``[UNL]`` forced after each question: refusal rate, rate of ending the turn without
    another ``[UNL]``; and on the plain prompts, how often ``[UNL]`` is the greedy first token (should be 0)."""
    eos = end_of_turn_id(tokenizer)
    continuations = generate_answer_ids(model, tokenizer, questions, max_new_tokens=max_new_tokens,
                                        batch_size=batch_size, forced_prefix=[token_id])
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in continuations]
    refusals = [is_refusal(t) for t in texts]
    ended = [bool(ids) and ids[-1] == eos and ids.count(token_id) <= 1 for ids in continuations]
    firsts = first_token_ids(model, tokenizer, questions, batch_size=batch_size)
    return {
        "questions": len(questions),
        "refusal_rate": sum(refusals) / len(questions),
        "ended_rate": sum(ended) / len(questions),
        "unl_first_token_rate_unedited": sum(f == token_id for f in firsts) / len(questions),
        "examples": [{"question": q, "continuation": tokenizer.decode(ids, skip_special_tokens=False)}
                     for q, ids in list(zip(questions, continuations))[:5]],
    }
