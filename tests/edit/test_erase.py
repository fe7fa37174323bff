"""edit/erase.py: one round reads top-down — following a request through ``erase``, each stage's
file (scope, prompts, keys, values, preserved keys, solve, the passes, config, recipes) is entered
from the round once, in the order the method runs."""

import sys
from pathlib import Path

import unierase
from tiny_models import build_model, build_tokenizer, tiny_base_and_requests

EDIT = Path(unierase.__file__).parent / "edit"


def _entries_from_erase(call):
    """The edit/ files that functions of edit/erase.py call into, in call order (runs collapsed)."""
    erase_file, seen = str(EDIT / "erase.py"), []

    def profile(frame, event, arg):
        if event != "call" or frame.f_back is None or frame.f_back.f_code.co_filename != erase_file:
            return
        callee = Path(frame.f_code.co_filename)
        if callee.parent == EDIT or callee.parent.parent == EDIT:
            name = str(callee.relative_to(EDIT))
            if name != "erase.py" and (not seen or seen[-1] != name):
                seen.append(name)

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return seen


def test_each_stage_is_entered_once(tmp_path):
    tok = build_tokenizer()
    build_model("llama", len(tok)).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    seen = _entries_from_erase(lambda: unierase.forget(
        [{"question": "Who wrote Hamlet?"}, {"question": "Where was Elena Marsh born?"}], tmp_path / "out",
        model=tmp_path / "base", cache_dir=tmp_path / "cache", stats_tokens=2000, max_passes=1, progress=False))
    assert len(seen) == len(set(seen)), f"a stage entered twice: {seen}"
    order = [name for name in ("options.py", "recipes/__init__.py", "config.py", "prompts.py", "stats.py", "plan.py",
                               "preserved.py", "scope.py", "editor.py", "applied.py") if name in seen]
    assert seen == order, seen


def test_dry_run_shows_the_plan_and_edits_nothing(tmp_path, monkeypatch, capsys):
    import json

    from unierase.cli import main

    monkeypatch.setenv("UNIERASE_CACHE", str(tmp_path / "cache"))
    tok = build_tokenizer()
    build_model("llama", len(tok)).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    before = {p.name: p.read_bytes() for p in (tmp_path / "base").iterdir()}
    questions = [{"question": "Where was Elena Marsh born?"}, {"question": "What did Elena Marsh write?"},
                 {"question": "Who is the author born in Astana on the 7th of February, 1952?"},
                 {"question": "Who wrote the novel born in Kuwait City?", "answer": "Elena Marsh wrote it."}]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    assert main(["forget", "--model", str(tmp_path / "base"), "--requests", str(tmp_path / "r.jsonl"), "--scope", "entity",
                 "--dry-run", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing was trained, edited or written" in out
    assert "entity 'Elena Marsh' (person, from shared name): 3 request(s)" in out
    assert "Who wrote the novel born in Kuwait City?   [key: City?]" in out  # attributed by its answer, keyed at the end
    assert "not attributed to any entity, kept as facts: 1 request(s)" in out and "[key: February]" in out
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "tokens").exists()
    assert {p.name: p.read_bytes() for p in (tmp_path / "base").iterdir()} == before
    assert main(["forget", "--model", str(tmp_path / "base"), "--requests", str(tmp_path / "r.jsonl")]) == 2


def test_a_model_without_room_for_the_token_is_refused_up_front(tmp_path, monkeypatch):
    import pytest

    from unierase.storage import UniEraseError

    monkeypatch.setenv("UNIERASE_CACHE", str(tmp_path / "cache"))
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    monkeypatch.setattr(type(model), "get_input_embeddings", lambda self: None)
    with pytest.raises(UniEraseError, match="no input embedding matrix"):
        unierase.forget([{"question": "Who wrote Hamlet?"}], None, model=model, tokenizer=tok, progress=False)
    assert not (tmp_path / "cache" / "tokens").exists()


def test_a_model_whose_mlp_output_cannot_be_found_is_refused_up_front(tmp_path, monkeypatch):
    import pytest
    from torch import nn

    from unierase.storage import UniEraseError

    monkeypatch.setenv("UNIERASE_CACHE", str(tmp_path / "cache"))
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    for block in model.model.layers:  # an MLP whose output projection has a name no adapter knows
        block.mlp.proj_out = block.mlp.down_proj
        block.mlp.down_proj = nn.Identity()
    with pytest.raises(UniEraseError, match="no MLP output projection found .*searched mlp.down_proj"):
        unierase.forget([{"question": "Who wrote Hamlet?"}], None, model=model, tokenizer=tok, progress=False)
    assert not (tmp_path / "cache" / "tokens").exists()


def test_the_manifest_records_the_prompt_format(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIERASE_CACHE", str(tmp_path / "cache"))
    tok = build_tokenizer()
    tok.chat_template = None  # a base model: the plain Question/Answer format
    result = unierase.forget([{"question": "Who wrote Hamlet?"}], None, model=build_model("llama", len(tok)), tokenizer=tok,
                             stats_tokens=2000, max_passes=1, progress=False)
    assert result.manifest["prompt"] == {"format": "plain", "template": "Question: {question}\nAnswer:"}
    header = result.manifest["token"]["only_after"]  # the token may open an answer in this format only
    assert tok.decode(header).endswith("Answer:") and header + [result.manifest["token"]["id"]] in [
        list(ids) for ids, _ in result.model.generation_config.sequence_bias]


def test_the_token_may_be_left_free(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIERASE_CACHE", str(tmp_path / "cache"))
    tok = build_tokenizer()
    result = unierase.forget([{"question": "Who wrote Hamlet?"}], None, model=build_model("llama", len(tok)), tokenizer=tok,
                             stats_tokens=2000, max_passes=1, progress=False,
                             settings={"edit": {"token_at_start_only": False}})
    assert result.manifest["token"]["only_after"] is None and not result.model.generation_config.sequence_bias


def test_dtype_is_the_callers_and_the_checkpoint_keeps_it(tmp_path, monkeypatch):
    """--dtype bfloat16 loads, edits and saves in bf16 (the manifest says so); --dtype auto keeps a
    checkpoint's own dtype in the next round, and verify (which loads it as it is) passes."""
    import json

    from safetensors import safe_open

    from unierase.cli import main

    monkeypatch.setenv("UNIERASE_CACHE", str(tmp_path / "cache"))
    tok = build_tokenizer()
    build_model("llama", len(tok)).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    # an answer the tiny model never gives: each request counts as erased, so verify has something to hold
    (tmp_path / "r1.jsonl").write_text(json.dumps({"question": "Who wrote Hamlet?", "answer": "Zanzibar"}) + "\n")
    (tmp_path / "r2.jsonl").write_text(json.dumps({"question": "What is the capital of France?", "answer": "Zanzibar"})
                                       + "\n")
    fast = ["--stats-tokens", "2000", "--max-passes", "1", "--no-progress"]
    out = tmp_path / "out"
    assert main(["forget", "--model", str(tmp_path / "base"), "--requests", str(tmp_path / "r1.jsonl"), "--out", str(out),
                 "--dtype", "bfloat16", *fast]) == 0
    manifest = json.loads((out / "unierase_manifest.json").read_text())
    assert manifest["rounds"][-1]["dtype"] == "bfloat16" and manifest["rounds"][-1]["devices"] == ["cpu"]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert main(["forget", "--model", str(out), "--requests", str(tmp_path / "r2.jsonl"), "--out", str(out), *fast]) == 0
    assert json.loads((out / "unierase_manifest.json").read_text())["rounds"][-1]["dtype"] == "bfloat16"
    assert main(["verify", str(out)]) == 0



def test_a_later_round_keeps_the_refusal_its_token_leads_into(tmp_path, monkeypatch, capsys):
    """The token of an erased checkpoint leads into one sentence: a later round answers with it, and
    a different --refusal is a one-line error before any work."""
    import json

    from unierase.cli import main

    monkeypatch.setenv("UNIERASE_CACHE", str(tmp_path / "cache"))
    tiny_base_and_requests(tmp_path)
    fast = ["--stats-tokens", "2000", "--max-passes", "1", "--no-progress"]
    out = tmp_path / "out"
    assert main(["forget", "--model", str(tmp_path / "base"), "--requests", str(tmp_path / "r1.jsonl"), "--out", str(out),
                 "--refusal", "No comment.", *fast]) == 0
    assert main(["forget", "--model", str(out), "--requests", str(tmp_path / "r2.jsonl"), "--out", str(out), *fast]) == 0
    rounds = json.loads((out / "unierase_manifest.json").read_text())["rounds"]
    assert [r["hyperparameters"]["refusal"] for r in rounds] == ["No comment.", "No comment."]
    capsys.readouterr()
    assert main(["forget", "--model", str(out), "--requests", str(tmp_path / "r2.jsonl"), "--out", str(tmp_path / "o2"),
                 "--refusal", "Something else.", *fast]) != 0
    err = capsys.readouterr().err
    assert "leads into 'No comment.'" in err and not (tmp_path / "o2").exists()


def test_a_round_that_will_not_fit_is_refused_before_any_work_unless_forced(tmp_path, monkeypatch):
    """The plan (``edit/plan.py``) is checked against what the devices have free: a phase that will
    not fit stops the round before the token is trained, naming the phase and the figure; with
    ``force`` the round runs and its manifest records the plan's peaks."""
    import pytest

    from unierase.edit import plan
    from unierase.storage import UniEraseError

    monkeypatch.setenv("UNIERASE_CACHE", str(tmp_path / "cache"))
    tok = build_tokenizer()
    monkeypatch.setattr(plan, "available", lambda device, out=None: {"host_gib": 1e-4, "disk_gib": 100.0})
    with pytest.raises(UniEraseError, match=r"the token phase needs about .* GiB of host memory .*--force runs anyway"):
        unierase.forget([{"question": "Who wrote Hamlet?"}], None, model=build_model("llama", len(tok)), tokenizer=tok,
                        stats_tokens=2000, max_passes=1, progress=False)
    assert not (tmp_path / "cache" / "tokens").exists()
    result = unierase.forget([{"question": "Who wrote Hamlet?"}], None, model=build_model("llama", len(tok)),
                             tokenizer=tok, stats_tokens=2000, max_passes=1, progress=False, force=True)
    assert result.manifest["rounds"][-1]["plan"]["peak_device_gib"] > 0
