"""The command line end to end on tiny saved models: success, sequential continuation, bad input."""

import json
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, OPTConfig

from tiny_models import build_model, build_tokenizer
from unierase.cli import main
from unierase.record.manifest import SCHEMA_VERSION


@pytest.fixture
def tiny_model_dir(tmp_path):
    tok = build_tokenizer()
    model = build_model("llama", len(tok) + 1)
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def requests_file(tmp_path):
    path = tmp_path / "forget.jsonl"
    path.write_text('{"question": "What is the capital of France?", "subject": "France"}\n{"question": "Who wrote Hamlet?"}\n')
    return path


def run_cli(*args):
    return main([str(a) for a in args])


def test_help_explains_itself():
    out = subprocess.run([sys.executable, "-m", "unierase.cli", "forget", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "question" in out.stdout and "--overwrite" in out.stdout


def test_forget_then_sequential_round_in_a_new_process(tmp_path, tiny_model_dir, requests_file, isolated_cache, capsys):
    out = tmp_path / "edited"
    assert run_cli("forget", "--model", tiny_model_dir, "--requests", requests_file, "--out", out, "--stats-tokens", 2000,
                   "--max-passes", 2, "--set", "values.steps=3", "--set", "edit.neutral_templates=2") == 0
    manifest = json.loads((out / "unierase_manifest.json").read_text())
    first = manifest["rounds"][0]
    assert first["settings"] == {"values": {"steps": 3}, "edit": {"neutral_templates": 2}}
    assert first["hyperparameters"]["values"]["steps"] == 3 and first["hyperparameters"]["neutral_templates"] == 2
    assert first["mode"] == "batch" and len(first["requests"]) == 2
    assert manifest["schema"] == SCHEMA_VERSION and first["recipe"] is None  # a tiny model: neutral defaults
    assert first["hyperparameters"]["stats_tokens"] == 2000 and manifest["statistics"]["tokens"] < 3000
    assert first["hyperparameters"]["max_passes"] == 2 and len(first["passes"]) <= 2
    summary = capsys.readouterr().out
    assert ("not reached yet" in summary) == bool(first["not_reached"]), summary
    assert 0 < manifest["parameter_fraction"] < 1 and (out / "unierase_state.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert "<|unlearn|>" in tok.get_vocab() and model.get_input_embeddings().weight.shape[0] == len(tok)
    rule = model.generation_config.sequence_bias  # the token may open an answer, nothing else
    token_id = manifest["token"]["id"]
    assert rule[:2] == [[[token_id], -1024.0], [manifest["token"]["only_after"] + [token_id], 1024.0]]
    # and after it the saved config writes the chosen refusal, then the end of the turn
    lead = [ids for ids, bias in rule[2:] if bias == 1024.0 and ids[0] == token_id]
    assert len(lead) == len(rule) - 2 and [len(ids) for ids in lead] == list(range(2, len(lead) + 2))
    assert tok.decode(lead[-1][1:], skip_special_tokens=True) == first["hyperparameters"]["refusal"]
    second = tmp_path / "second.jsonl"
    second.write_text('{"question": "Who painted the Mona Lisa?"}\n')
    proc = subprocess.run([sys.executable, "-m", "unierase.cli", "-q", "forget", "--model", str(out), "--requests", str(second),
                           "--out", str(out), "--no-texts", "--stats-tokens", "2000"], capture_output=True, text=True,
                          env={**__import__("os").environ, "UNIERASE_CACHE": str(isolated_cache)})
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "unierase_manifest.json").read_text())
    assert [r["mode"] for r in manifest["rounds"]] == ["batch", "sequential"]
    assert AutoModelForCausalLM.from_pretrained(out).generation_config.sequence_bias == rule  # written once
    assert "question" not in manifest["rounds"][1]["requests"][0] and len(manifest["rounds"][1]["requests"][0]["sha256"]) == 64
    assert run_cli("ask", "--model", out, "Who wrote Hamlet?", "--max-new-tokens", 3) == 0


def _assert_error(capsys, code, fragment, out):
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("unierase:")]  # not progress bars
    assert code == 2
    assert len(err) == 1 and err[0].startswith("unierase: error:") and fragment in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("content,fragment", [
    (None, "not found"),
    ('{"question": "Q?"}\n{oops\n', "forget.jsonl:2: malformed JSON"),
    ('{"answer": "A"}\n', "missing required field 'question'"),
    ("", "contains no forget requests"),
    ('{"question": "Who wrote Hamlet?", "subject": "Goethe"}\n', "does not occur in the question"),
])
def test_bad_requests(tmp_path, tiny_model_dir, capsys, content, fragment):
    path = tmp_path / "forget.jsonl"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "out"
    _assert_error(capsys, run_cli("forget", "--model", tiny_model_dir, "--requests", path, "--out", out), fragment, out)


def test_existing_output_needs_overwrite(tmp_path, tiny_model_dir, requests_file, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous result")
    code = run_cli("forget", "--model", tiny_model_dir, "--requests", requests_file, "--out", out)
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "previous result"


def test_unsupported_model(tmp_path, requests_file, capsys, isolated_cache):
    tok = build_tokenizer()
    folder = tmp_path / "opt"
    AutoModelForCausalLM.from_config(OPTConfig(vocab_size=len(tok), hidden_size=16, ffn_dim=32, num_hidden_layers=2,
                                               num_attention_heads=2, word_embed_proj_dim=16)).save_pretrained(folder)
    tok.save_pretrained(folder)
    capsys.readouterr()  # drop the progress bars of the set-up
    out = tmp_path / "out"
    _assert_error(capsys, run_cli("forget", "--model", folder, "--requests", requests_file, "--out", out),
                  "unsupported model", out)


def test_missing_model_dir(tmp_path, requests_file, capsys):
    out = tmp_path / "out"
    _assert_error(capsys, run_cli("forget", "--model", tmp_path / "nothing-here", "--requests", requests_file, "--out", out),
                  "does not exist", out)


def test_forget_flags_come_from_the_options_and_abbreviations_are_off(capsys):
    from unierase.cli import build_parser
    from unierase.edit.options import KEY_POSITIONS, SOLVER_NAMES
    from unierase.edit.solve import SOLVERS

    assert set(SOLVER_NAMES) == set(SOLVERS)
    forget = build_parser()._subparsers._group_actions[0].choices["forget"]
    choices = {a.dest: a.choices for a in forget._actions}
    assert tuple(choices["key_position"]) == KEY_POSITIONS
    groups = [g.title for g in forget._action_groups]
    assert "options of --method unierase" in groups and "options of --method ga+gd, ga+kl, npo+gd, ..." in groups
    with pytest.raises(SystemExit):  # "--refus" is no longer read as "--refusals"
        build_parser().parse_args(["forget", "--requests", "r", "--out", "o", "--method", "dpo+gd", "--refus", "x"])


def test_snapshot_slice_keeps_rows_aligned():
    from unierase.edit_checks import Snapshot

    snap = Snapshot(["a", "b", "c"], [[1], [2], [3]], ["x", "y", "z"], [1, 2, 3])
    part = snap.slice(1, 3)
    assert (part.questions, part.answer_ids, part.texts, part.first_tokens) == (["b", "c"], [[2], [3]], ["y", "z"], [2, 3])


def test_methods_lists_the_one_registry(capsys):
    from unierase.registry import get_method, methods
    from unierase.storage import UniEraseError

    assert main(["methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(methods()) and rows[0] == {"name": "unierase", "family": "edit",
                                                                      "description": methods()["unierase"].description}
    assert {r["family"] for r in rows[1:]} == {"fine-tuning"} and len(rows) == 9
    assert get_method("NPO_GD").name == "npo+gd" and get_method("UniErase").name == "unierase"
    with pytest.raises(UniEraseError, match="choose one of: unierase, ga\\+gd"):
        get_method("rome")


def test_every_verb_that_loads_a_model_says_where_and_in_what():
    """--device-map on every verb that loads a model; --dtype on those that may convert it (verify
    checks the bytes the ledger recorded and revert restores them, so both read the model as saved)."""
    import argparse

    from unierase.cli import build_parser

    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    flags = {name: {o for a in p._actions for o in a.option_strings} for name, p in verbs.items()}
    for verb in ("forget", "ask", "audit", "eval", "finetune", "demo", "stats"):
        assert {"--dtype", "--device-map"} <= flags[verb], verb
    assert "--device-map" in flags["verify"] and "--dtype" not in flags["verify"]
    assert "--dtype" not in flags["revert"]
