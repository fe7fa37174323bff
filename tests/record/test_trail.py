"""trail.py: history, verify and revert end to end on a tiny model: three UniErase rounds and a baseline round."""

import json
import shutil

import pytest
import torch

import unierase
from tiny_models import build_model, build_tokenizer
from unierase.record import trail as hist
from unierase.cli import main
from unierase.record.ledger import read_ledger
from unierase.record.rounds import MANIFEST_FILE, load_input
from unierase.storage import UniEraseError

QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?", "Where was Elena Marsh born?"]
# absolute steps: the tiny random model's hidden states are too small for steps in their own unit
# to reach every question in one pass, and these tests need each round's question erased (two passes:
# with the continuation margin one question needs a second)
FAST = dict(stats_tokens=2000, max_passes=2, progress=False, settings={"values": {"lr_unit": "absolute"}})


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    root = tmp_path_factory.mktemp("rounds")
    tok = build_tokenizer()
    model = build_model("llama", len(tok))  # no spare row: the unlearning token grows the embedding
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    for i, question in enumerate(QUESTIONS):
        # an answer the tiny model never gives: each request counts as erased, so verify has something to hold
        unierase.forget([{"question": question, "answer": "Zanzibar"}], root / "e", model=root / ("base" if i == 0 else "e"),
                        cache_dir=root / "cache", **FAST)
        shutil.copytree(root / "e", root / f"after{i + 1}")
    return root


def _copy(rounds, tmp_path, name="after3"):
    target = tmp_path / name
    shutil.copytree(rounds / name, target)
    return target


def test_history_lists_every_round(rounds, capsys):
    rows = hist.history(rounds / "after3")
    assert [(r["kind"], r["round"], r["method"], r["status"]) for r in rows] == [
        ("erase", 1, "unierase", "in force"), ("erase", 2, "unierase", "in force"), ("erase", 3, "unierase", "in force")]
    assert rows[1]["questions"] == [QUESTIONS[1]] and rows[0]["erased_at_time"] == "1/1"
    assert main(["history", str(rounds / "after3"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_verify_passes_on_an_untouched_model(rounds, tmp_path):
    report = hist.verify(rounds / "after3", cache_dir=rounds / "cache")
    assert report.ok, report.problems
    assert [r["revert_data"] for r in report.rounds] == ["ok", "ok", "ok"]
    assert all(r["erased"] == "1/1" for r in report.rounds)
    assert main(["verify", str(rounds / "after3"), "--json", str(tmp_path / "v.json")]) == 0
    assert json.loads((tmp_path / "v.json").read_text())["ok"] is True
    # placed by a device map (a JSON one, as the flag takes it): the same checks pass
    assert main(["verify", str(rounds / "after3"), "--device-map", '{"": "cpu"}']) == 0


def test_verify_flags_weights_changed_by_hand(rounds, tmp_path):
    folder = _copy(rounds, tmp_path)
    model = unierase.models.loading.load_model(folder)[0]
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    with torch.no_grad():
        model.get_input_embeddings().weight[manifest["token"]["id"]] += 0.5  # the token's row: round 1 set it
    model.save_pretrained(folder)
    report = hist.verify(folder, cache_dir=rounds / "cache")
    assert not report.ok and not report.weights["match"]
    assert "round(s) [1]" in report.problems[0]
    assert main(["verify", str(folder)]) == 1
    with pytest.raises(UniEraseError, match="differ from those the ledger recorded"):
        hist.revert(folder, 2, tmp_path / "r")


def test_verify_reports_a_question_that_answers_again(rounds, monkeypatch):
    real = hist.probe

    def leaky(model, tokenizer, requests, neighbours, token_id, **kw):
        out = real(model, tokenizer, requests, neighbours, token_id, **kw)
        for item in out["items"]:
            item["erased"] = False
        return out

    monkeypatch.setattr(hist, "probe", leaky)
    report = hist.verify(rounds / "after3", cache_dir=rounds / "cache")
    assert not report.ok and any("answer again" in p for p in report.problems)


def test_revert_is_bit_exact(rounds, tmp_path):
    result = hist.revert(rounds / "after3", 3, tmp_path / "r3", cache_dir=rounds / "cache")
    assert result.undone == [2]
    for name in ("model.safetensors", "unierase_state.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "r3" / name).read_bytes() == (rounds / "after2" / name).read_bytes(), name
    hist.revert(rounds / "after3", 1, tmp_path / "r1", cache_dir=rounds / "cache")
    for name in ("model.safetensors", "tokenizer.json", "config.json", "generation_config.json"):  # no token rule
        assert (tmp_path / "r1" / name).read_bytes() == (rounds / "base" / name).read_bytes(), name
    assert not (tmp_path / "r1" / "unierase_state.safetensors").exists()
    assert main(["revert", str(rounds / "after3"), "--undo-from", "9", "--out", str(tmp_path / "x")]) == 2


def test_a_round_after_a_revert_continues_the_ledger(rounds, tmp_path):
    hist.revert(rounds / "after3", 2, tmp_path / "r2", cache_dir=rounds / "cache")
    source = load_input(tmp_path / "r2")
    assert len(source.unierase_rounds) == 1 and len(source.ledger) == 4
    unierase.forget([{"question": QUESTIONS[2]}], tmp_path / "r2", model=tmp_path / "r2", cache_dir=rounds / "cache", **FAST)
    rows = hist.history(tmp_path / "r2")
    assert [(r["kind"], r["round"], r["status"]) for r in rows] == [
        ("erase", 1, "in force"), ("erase", 2, "reverted (entry 3)"), ("erase", 3, "reverted (entry 3)"),
        ("revert", 2, "—"), ("erase", 2, "in force")]
    assert [r["round"] for r in json.loads((tmp_path / "r2" / MANIFEST_FILE).read_text())["rounds"]] == [1, 2]
    assert hist.verify(tmp_path / "r2", cache_dir=rounds / "cache", check_answers=False).ok


def test_baseline_rounds_join_the_ledger_and_revert(rounds, tmp_path):
    folder = _copy(rounds, tmp_path)
    retain = [{"question": "Who painted the Mona Lisa?", "answer": "Leonardo da Vinci"}]
    unierase.forget([{"question": QUESTIONS[0], "answer": "Paris"}], tmp_path / "b", model=folder, method="ga+gd",
                    retain=retain, epochs=1, batch_size=1, progress=False)
    entries = read_ledger(tmp_path / "b", json.loads((tmp_path / "b" / MANIFEST_FILE).read_text())["ledger"])
    assert [e["method"] for e in entries] == ["unierase"] * 3 + ["ga+gd"]
    assert entries[3]["delta"]["tensors"]  # every changed tensor, stored exactly
    hist.revert(tmp_path / "b", 4, tmp_path / "back", cache_dir=rounds / "cache")
    assert (tmp_path / "back" / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    # UniErase accepts a baseline's (or fine-tuning's) output as its base and keeps what made it
    result = unierase.forget([{"question": QUESTIONS[1]}], tmp_path / "u", model=tmp_path / "b", cache_dir=rounds / "cache",
                             **FAST)
    assert result.manifest["base_history"]["method"] == "ga+gd" and len(result.manifest["rounds"]) == 1
    assert len(read_ledger(tmp_path / "u", result.manifest["ledger"])) == 5
