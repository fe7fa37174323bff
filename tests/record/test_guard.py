"""record/guard.py: a round that wrecks the model is not saved (exit status 2, the previous output
intact) unless forced, and the erasure-time probe does not count broken text as erased."""

import hashlib
import json

import pytest
import torch

from tiny_models import tiny_base_and_requests
from unierase.cli import main
from unierase.record.guard import MIN_AGREEMENT, GuardBaseline, WreckedModelError, check, guard_questions
from unierase.record.rounds import is_erased
from unierase.refusals import is_broken_text
from unierase.requests import ForgetRequest

FAST = ["--stats-tokens", "2000", "--max-passes", "1", "--no-progress"]


def _digest(folder):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()


@pytest.fixture
def base(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIERASE_CACHE", str(tmp_path / "cache"))
    return tiny_base_and_requests(tmp_path)


def _wreck_the_edit(monkeypatch):
    """Every edit pass also adds a huge ΔW to the edited projections."""
    from unierase.edit import erase

    real = erase.run_edit_passes

    def wrecking(model, tokenizer, adapter, requests, *args, **kwargs):
        result = real(model, tokenizer, adapter, requests, *args, **kwargs)
        generator = torch.Generator().manual_seed(0)
        for layer in result.last.layers:
            weight = adapter.weight(layer)
            adapter.add_to_weight(layer, 50 * torch.randn(weight.shape, generator=generator, dtype=weight.dtype))
        return result

    monkeypatch.setattr(erase, "run_edit_passes", wrecking)


def test_a_wrecking_round_is_refused_and_leaves_the_previous_output(base, monkeypatch, capsys):
    out = base / "erased"
    assert main(["forget", "--model", str(base / "base"), "--requests", str(base / "r1.jsonl"), "--out", str(out), *FAST]) == 0
    before = _digest(out)
    first = json.loads((out / "unierase_manifest.json").read_text())["rounds"][-1]["guard"]
    assert first["collapsed"] is False and first["mean_agreement"] >= MIN_AGREEMENT
    _wreck_the_edit(monkeypatch)
    capsys.readouterr()
    code = main(["forget", "--model", str(out), "--requests", str(base / "r2.jsonl"), "--out", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "the round was not saved" in err and "--force" in err
    assert _digest(out) == before  # nothing written, the first round's output intact
    # forced: saved, and the ledger and the manifest say so
    assert main(["forget", "--model", str(out), "--requests", str(base / "r2.jsonl"), "--out", str(out), "--force", *FAST]) == 0
    manifest = json.loads((out / "unierase_manifest.json").read_text())
    assert manifest["rounds"][-1]["guard"]["forced"] is True and len(manifest["rounds"]) == 2
    entries = [json.loads(line) for line in (out / "unierase_ledger.jsonl").read_text().splitlines()]
    assert entries[-1]["guard"]["collapsed"] is True and entries[-1]["guard"]["forced"] is True


def test_the_guard_measures_agreement_with_the_answers_before(tiny_llama):
    model, tok = tiny_llama
    questions = guard_questions(["Who is Ada Quill?", "Who is Ada Quill?"])
    assert questions.count("Who is Ada Quill?") == 1
    from unierase.generation import generate_answer_ids

    answers = generate_answer_ids(model, tok, questions[:3], max_new_tokens=6)
    report = check(model, tok, GuardBaseline(questions[:3], answers))
    assert report["mean_agreement"] == 1.0 and not report["collapsed"]
    other = [[(t + 7) % 300 for t in a] for a in answers]  # answers the model does not give
    with pytest.raises(WreckedModelError, match="keeps only 0%"):
        check(model, tok, GuardBaseline(questions[:3], other))
    assert check(model, tok, GuardBaseline(questions[:3], other), force=True)["forced"] is True


def test_a_round_that_moves_many_ordinary_answers_is_saved_with_a_warning(tiny_llama, caplog):
    import logging

    model, tok = tiny_llama
    questions = guard_questions()[:4]
    from unierase.generation import generate_answer_ids

    answers = generate_answer_ids(model, tok, questions, max_new_tokens=6)
    partly = [a[:3] + [(t + 7) % 300 for t in a[3:]] for a in answers]  # the first half still the model's own
    with caplog.at_level(logging.WARNING, logger="unierase.record.guard"):
        report = check(model, tok, GuardBaseline(questions, partly))
    assert not report["collapsed"] and 0.5 <= report["mean_agreement"] < 0.9
    assert "unierase calibrate" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="unierase.record.guard"):
        check(model, tok, GuardBaseline(questions, answers))
    assert caplog.text == ""


@pytest.mark.parametrize("text, broken", [
    ("The capital of Russia is Moscow.", False), ("Paris.", False), ("1990", False), ("Wait...", False),
    ("I'mI'mI'mI'mI'm", True), ("The Eiffel Tower..........", True), ("", True), ("?!?))", True), ("x y z", True),
])
def test_broken_text(text, broken):
    assert is_broken_text(text) is broken


def test_broken_text_is_not_an_erasure():
    request = ForgetRequest(question="What is the capital of France?", answer="Paris")
    assert is_erased([5], "The capital of France is Lyon.", request, token_id=9)
    assert not is_erased([5], "lalalalalalala", request, token_id=9)
    assert is_erased([9], "", request, token_id=9)  # the unlearning token first: erased
