import torch

from tiny_models import build_model, build_tokenizer
from unierase.edit.config import EditConfig
from unierase.edit.prompts import CONTEXT_PREFIXES, CONTEXT_SUFFIXES
from unierase.edit.refit import RefitConfig, refit_frames, refit_if_held, refit_input_row
from unierase.models.adapters import find_mlp_output
from unierase.requests import ForgetRequest
from unierase.token.training import add_unlearning_token, untie_output_embeddings

QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?"]


def _model_with_token(own_row: bool):
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
    model, tok, token_id = _model_with_token(own_row=True)
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    report = refit_input_row(model, tok, token_id, QUESTIONS, "I cannot say.",
                             RefitConfig(steps=10, lr=0.1, batch_size=4, frames=2, generic_questions=4))
    assert report["examples"] == 2 * 3 + 4
    assert report["loss_after"] < report["loss_before"] - 0.1
    for name, value in model.state_dict().items():
        changed = value != snapshot[name]
        if "embed_tokens" in name:
            assert changed.any(dim=-1).nonzero().flatten().tolist() == [token_id], name
        else:
            assert not changed.any(), name  # the output row too: whether [UNL] is emitted is the edit's


def test_refit_does_nothing_when_off_or_when_the_row_is_tied():
    for own_row, steps in ((True, 0), (False, 5)):
        model, tok, token_id = _model_with_token(own_row)
        snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        assert refit_input_row(model, tok, token_id, QUESTIONS, "I cannot say.", RefitConfig(steps=steps)) is None
        assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())


def test_refit_is_undone_when_a_reached_request_no_longer_holds(monkeypatch):
    import unierase.edit.editor as editor

    model, tok, token_id = _model_with_token(own_row=True)
    row = model.get_input_embeddings().weight[token_id].detach().clone()
    config = EditConfig(refusal="I cannot say.", refit=RefitConfig(steps=5, lr=0.05, batch_size=4, generic_questions=2))
    requests = [ForgetRequest(question=q) for q in QUESTIONS]
    checked = []

    def undone(model_, tok_, adapter, reqs, indices, target, config_, groups):
        checked.append(list(indices))
        return [indices[-1]]

    monkeypatch.setattr(editor, "_undone", undone)
    report = refit_if_held(model, tok, find_mlp_output(model), requests, token_id, config, reached=[0, 1])
    assert checked == [[0, 1]] and report["kept"] is False
    assert torch.equal(model.get_input_embeddings().weight[token_id], row)

    monkeypatch.setattr(editor, "_undone", lambda *a: [])
    report = refit_if_held(model, tok, find_mlp_output(model), requests, token_id, config, reached=[0, 1])
    assert report["kept"] is True and not torch.equal(model.get_input_embeddings().weight[token_id], row)


def test_a_round_records_its_refit_and_revert_restores_the_row(tmp_path, monkeypatch):
    """A round with the refit on records it in the manifest; the refitted row is part of the round's
    revert data (the embedding is among the tensors a round may change)."""
    import json

    import unierase
    import unierase.edit.editor as editor
    from tiny_models import tiny_base_and_requests
    from unierase.record import trail

    monkeypatch.setenv("UNIERASE_CACHE", str(tmp_path / "cache"))
    tiny_base_and_requests(tmp_path)
    fast = dict(stats_tokens=2000, max_passes=1, progress=False)
    unierase.forget([{"question": QUESTIONS[0]}], tmp_path / "one", model=tmp_path / "base", **fast)
    monkeypatch.setattr(editor, "_undone", lambda *a: [])  # the tiny model's answers: keep the refitted row
    unierase.forget([{"question": QUESTIONS[1]}], tmp_path / "two", model=tmp_path / "one",
                    settings={"refit": {"steps": 3, "lr": 0.05, "generic_questions": 2}}, **fast)
    rounds = json.loads((tmp_path / "two" / "unierase_manifest.json").read_text())["rounds"]
    assert rounds[0]["token_refit"] is None
    assert rounds[1]["token_refit"]["kept"] is True and rounds[1]["hyperparameters"]["refit"]["steps"] == 3
    trail.revert(tmp_path / "two", 2, tmp_path / "back")
    assert (tmp_path / "back" / "model.safetensors").read_bytes() == (tmp_path / "one" / "model.safetensors").read_bytes()
