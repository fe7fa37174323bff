from dataclasses import replace

import torch

from tiny_models import build_model, build_tokenizer
from unierase.edit.config import EditConfig
from unierase.edit.prompts import CONTEXT_PREFIXES, CONTEXT_SUFFIXES
from unierase.edit.refit import (RefitConfig, answers_hold, can_refit, prefill_questions, refit_examples,
                                 refit_frames, refit_input_row, starts_with)
from unierase.generation import generate_answer_ids
from unierase.requests import ForgetRequest
from unierase.token.training import add_unlearning_token, answer_ids, untie_output_embeddings

QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?"]
REFUSAL = "I cannot say."


def _model_with_token(own_row: bool = True):
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    if own_row:
        untie_output_embeddings(model)
    token_id = add_unlearning_token(model, tok)
    return model, tok, token_id


def test_frames_are_the_edits_own_prefixes_and_suffixes():
    framed = refit_frames("Who?", 3)
    assert framed == ["Who?", CONTEXT_PREFIXES[0] + "Who?", "Who?" + CONTEXT_SUFFIXES[0], CONTEXT_PREFIXES[1] + "Who?"]
    assert refit_frames("Who?", 0) == ["Who?"]


def test_refit_lowers_the_refusal_loss_and_moves_only_the_input_row():
    model, tok, token_id = _model_with_token()
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    prefilled = prefill_questions(model, tok, QUESTIONS, 4)
    report = refit_input_row(model, tok, token_id, prefilled, REFUSAL,
                             RefitConfig(epochs=8, step=0.1, batch_size=4, frames=2, generic_questions=2))
    assert report["examples"] == 2 * 3 + 2 and report["steps"] == 8 * 3
    assert report["loss_last_epoch"] < report["loss_first_epoch"] - 0.1
    for name, value in model.state_dict().items():
        changed = value != snapshot[name]
        if "embed_tokens" in name:
            assert changed.any(dim=-1).nonzero().flatten().tolist() == [token_id], name
        else:
            assert not changed.any(), name  # the output row too: whether [UNL] is emitted is the edit's


def test_nothing_is_refitted_when_off_or_when_the_row_is_tied():
    for own_row, epochs in ((True, 0), (False, 1)):
        model, tok, token_id = _model_with_token(own_row)
        assert not can_refit(model, RefitConfig(epochs=epochs))
        snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        prefilled = prefill_questions(model, tok, QUESTIONS, 4)
        assert refit_input_row(model, tok, token_id, prefilled, REFUSAL, RefitConfig(epochs=epochs)) is None
        assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())


def test_answers_hold_reads_the_greedy_answer():
    """The check of a prefill agrees with greedy generation: the first token alone, and a tail that
    is (or is not) the greedy continuation."""
    model, tok, token_id = _model_with_token()
    answers = generate_answer_ids(model, tok, QUESTIONS, max_new_tokens=4)
    prefilled = prefill_questions(model, tok, QUESTIONS, 1)
    # the model's own greedy answers, as the target and its tail, hold; a changed tail does not
    held = [answers_hold(model, tok, prefilled, answers[i][0], [answers[i][1:] if j == i else [] for j in range(2)])
            for i in range(2)]
    assert held[0][0] and held[1][1]
    wrong = [(answers[0][1] + 1) % len(tok)] + answers[0][2:]
    assert answers_hold(model, tok, prefilled, answers[0][0], [wrong, []])[0] is False
    never = next(t for t in range(len(tok)) if t not in (answers[0][0], answers[1][0]))
    assert answers_hold(model, tok, prefilled, never, [[], []]) == [False, False]


def test_the_recheck_keeps_a_refit_only_when_it_undoes_no_more(monkeypatch):
    from unierase.edit import editor

    model, tok, token_id = _model_with_token()
    requests = [ForgetRequest(q) for q in QUESTIONS]
    config = EditConfig(refusal=REFUSAL, refit=RefitConfig(epochs=2, step=0.1, batch_size=2, generic_questions=2))
    row = model.get_input_embeddings().weight[token_id].detach().clone()
    for script, undone, kept in (([[False, True], [True, True]], [], True), ([[False, True], [False, False]], [0], False)):
        calls = iter(script)
        monkeypatch.setattr(editor, "answers_hold", lambda *a: next(calls))
        monkeypatch.setattr(editor, "starts_with", lambda *a: [True, True])  # only the tails are off
        check = editor._recheck(model, tok, requests, [0, 1], token_id, config, None)
        assert check["undone"] == undone and check["refit"]["kept"] is kept
        moved = not torch.equal(model.get_input_embeddings().weight[token_id], row)
        assert moved is kept
        model.get_input_embeddings().weight.data[token_id] = row
    # nothing undone, or only requests whose answer no longer starts with the token: no refit
    monkeypatch.setattr(editor, "answers_hold", lambda *a: [True, True])
    assert editor._recheck(model, tok, requests, [0, 1], token_id, config, None) == {"undone": [], "refit": None}
    # ... except at the round's last check, where the row is fitted to all of the round's questions
    check = editor._recheck(model, tok, requests, [0, 1], token_id, config, None, final=True)
    assert check["undone"] == [] and check["refit"]["examples"] == 2 + 2
    model.get_input_embeddings().weight.data[token_id] = row
    off = replace(config, refit=replace(config.refit, at_end=False))
    assert editor._recheck(model, tok, requests, [0, 1], token_id, off, None, final=True) == {"undone": [], "refit": None}
    monkeypatch.setattr(editor, "answers_hold", lambda *a: [False, True])
    monkeypatch.setattr(editor, "starts_with", lambda *a: [False, True])
    assert editor._recheck(model, tok, requests, [0, 1], token_id, config, None) == {"undone": [0], "refit": None}


def test_the_checked_tail_is_the_scored_refusal():
    from unierase.edit.values import ValueConfig, scored_continuation

    tok = build_tokenizer()
    tail = answer_ids(tok, REFUSAL, 5, True)[1:]
    assert scored_continuation(tail, ValueConfig()) == tail
    assert scored_continuation(tail, ValueConfig(continuation_tokens=2)) == tail[:2]
    assert scored_continuation(tail, ValueConfig(continuation_weight=0.0)) == []
    assert scored_continuation(None, ValueConfig()) == []


def test_a_selection_of_the_prefill_checks_as_the_whole_did_and_the_fit_spreads_its_anchors():
    model, tok, token_id = _model_with_token()
    questions = QUESTIONS + ["Where is Rome?", "Who painted the Mona Lisa?"]
    answers = generate_answer_ids(model, tok, questions, max_new_tokens=3)
    prefilled = prefill_questions(model, tok, questions, 3)
    target = answers[0][0]
    tails = [a[1:] for a in answers]
    whole = answers_hold(model, tok, prefilled, target, tails)
    picked = prefilled.select([1, 3])
    assert picked.questions == [questions[1], questions[3]] and len(picked.passes) == 2  # rows of two batches
    assert answers_hold(model, tok, picked, target, [tails[1], tails[3]]) == [whole[1], whole[3]]
    assert starts_with(prefilled, target) == [a[0] == target for a in answers]
    assert refit_examples([5], [0, 1, 2, 3, 4, 6, 7, 8], 3) == [0, 4, 5, 8]
    assert refit_examples([2], [0, 1], 0) == [2] and refit_examples([], [0, 1], 5) == [0, 1]
