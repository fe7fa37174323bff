"""Measurements of one edit: snapshots with draft answers feed the locality figures."""

import pytest

from unierase import edit_checks
from unierase.edit_checks import retain_metrics, snapshot


def test_retain_metrics_use_the_agreement_measured_with_the_unedited_answers_as_drafts(tiny_llama, monkeypatch):
    model, tok = tiny_llama
    questions = ["What is the capital of France?", "Who wrote it?", "Name a colour."]
    before = snapshot(model, tok, questions, max_new_tokens=5)
    before.answer_ids[1] = before.answer_ids[1][:2] + [(before.answer_ids[1][2] + 1) % 50]  # a changed answer
    plain = retain_metrics(model, tok, before, snapshot(model, tok, questions, max_new_tokens=5), [None] * 3, -1)

    after = snapshot(model, tok, questions, max_new_tokens=5, drafts=before.answer_ids)
    monkeypatch.setattr(edit_checks, "teacher_forced_agreement",
                        lambda *a, **k: pytest.fail("the drafts' agreement should have been used"))
    with_drafts = retain_metrics(model, tok, before, after, [None] * 3, -1)
    assert with_drafts["teacher_forced_agreement"] == pytest.approx(plain["teacher_forced_agreement"])
    assert with_drafts["teacher_forced_agreement"] < 1.0
    assert with_drafts["greedy_exact_match"] == plain["greedy_exact_match"]


def test_extend_answers_continues_only_unfinished_answers(tiny_llama):
    from unierase.edit_checks import extend_answers
    from unierase.generation import generate_answer_ids

    model, tok = tiny_llama
    questions = ["What is the capital of France?", "Who wrote it?"]
    short = generate_answer_ids(model, tok, questions, max_new_tokens=3)
    ended = short[1][:2] + [tok.eos_token_id]
    longer = extend_answers(model, tok, questions, [short[0], ended], 8)
    assert longer[0] == generate_answer_ids(model, tok, questions[:1], max_new_tokens=8)[0]
    assert longer[1] == ended
