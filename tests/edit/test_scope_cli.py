"""``forget --scope`` end to end on a tiny saved model: the manifest records each request's scope,
the entity groups, their shared key token and the neutral questions they add."""

import json

from tiny_models import build_model, build_tokenizer
from unierase.cli import main


def test_forget_records_the_scope_of_each_request(tmp_path, isolated_cache):
    tok = build_tokenizer()
    folder = tmp_path / "base"
    build_model("llama", len(tok) + 1).save_pretrained(folder)
    tok.save_pretrained(folder)
    requests = tmp_path / "r.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "Where was Elena Marsh born?"}, {"question": "When did Elena Marsh die?"},
        {"question": "What is the capital of France?"},
        {"question": "Who wrote Hamlet?", "scope": "entity", "subject": "Hamlet"}]))  # a single word needs its subject
    out = tmp_path / "erased"
    assert main(["forget", "--model", str(folder), "--requests", str(requests), "--out", str(out), "--stats-tokens", "2000",
                 "--max-passes", "1"]) == 0
    scope = json.loads((out / "unierase_manifest.json").read_text())["rounds"][0]["scope"]
    assert scope["default"] == "auto" and scope["requests"] == ["entity", "entity", "fact", "entity"]
    assert [(e["entity"], e["requests"]) for e in scope["entities"]] == [("Elena Marsh", [0, 1]), ("Hamlet", [3])]
    assert scope["entities"][0]["added"][0] == "Tell me about Elena Marsh."
    assert "sh" in scope["entities"][0]["key_token"] or scope["entities"][0]["key_token"].strip() in "Elena Marsh"
    assert main(["forget", "--model", str(folder), "--requests", str(requests), "--out", str(tmp_path / "f"), "--stats-tokens",
                 "2000", "--max-passes", "1", "--scope", "fact"]) == 0
    scope = json.loads((tmp_path / "f" / "unierase_manifest.json").read_text())["rounds"][0]["scope"]
    assert scope["requests"] == ["fact", "fact", "fact", "entity"]  # a request's own field wins
