"""Measure the unlearning token's universality on questions it was not trained on."""

from __future__ import annotations

from ..generation import first_token_ids, generate_answer_ids
from ..refusals import is_refusal


def token_universality(model, tokenizer, token_id: int, questions: list[str], *, max_new_tokens: int = 24,
                       batch_size: int = 32) -> dict:
    """With ``[UNL]`` forced after each question: refusal rate, rate of closing with ``[UNL]`` + end of
    turn; and on the plain prompts, how often ``[UNL]`` is the greedy first token (should be 0)."""
    eos = tokenizer.eos_token_id
    continuations = generate_answer_ids(model, tokenizer, questions, max_new_tokens=max_new_tokens,
                                        batch_size=batch_size, forced_prefix=[token_id])
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in continuations]
    refusals = [is_refusal(t) for t in texts]
    closed = [token_id in ids and len(ids) >= 2 and ids[-1] == eos and ids[-2] == token_id for ids in continuations]
    firsts = first_token_ids(model, tokenizer, questions, batch_size=batch_size)
    return {
        "questions": len(questions),
        "refusal_rate": sum(refusals) / len(questions),
        "closed_rate": sum(closed) / len(questions),
        "unl_first_token_rate_unedited": sum(f == token_id for f in firsts) / len(questions),
        "examples": [{"question": q, "continuation": tokenizer.decode(ids, skip_special_tokens=False)}
                     for q, ids in list(zip(questions, continuations))[:5]],
    }
