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


def test_retain_metrics_count_the_token_anywhere_in_an_answer_not_only_first(tiny_llama):
    model, tok = tiny_llama
    questions = ["What is the capital of France?", "Who wrote it?", "Name a colour.", "Where is Peru?"]
    before = snapshot(model, tok, questions, max_new_tokens=4)
    after = snapshot(model, tok, questions, max_new_tokens=4)
    token = 7
    after.answer_ids[1] = after.answer_ids[1][:2] + [token]  # taken up mid-answer
    after.first_tokens[2], after.answer_ids[2] = token, [token] + after.answer_ids[2][1:]  # as the first token
    figures = retain_metrics(model, tok, before, after, [None] * 4, token)
    assert figures["starts_with_unl"] == 0.25 and figures["unl_anywhere"] == 0.5
