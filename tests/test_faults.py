"""Faults and bad input: killed writers, locks, corrupted files, and the findings of a demanding first use."""

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from tiny_models import build_model, build_tokenizer
from unierase.cli import main
from unierase.record.ledger import LEDGER_FILE
from unierase.record.rounds import MANIFEST_FILE, load_input
from unierase.record.edit_state import STATE_FILE
from unierase.storage import DirectoryLock, UniEraseError, atomic_directory, recover_interrupted

WRITER = r"""
import sys, torch
from unierase.models.loading import load_model
from unierase.record.rounds import load_input, save_round, start_round
src, out, step = sys.argv[1], sys.argv[2], float(sys.argv[3])
model, tok = load_model(src)
source = load_input(src)
name = "model.layers.1.mlp.down_proj.weight"
start = start_round(model, changes=[name])
with torch.no_grad():
    model.state_dict()[name].add_(step * torch.ones(32, 1) @ torch.linspace(-1, 1, 64)[None])
save_round(out, model, tok, start, source, manifest={"method": "test-writer", "step": step},
           entry={"kind": "erase", "method": "test-writer", "requests": []})
"""


@pytest.fixture
def model_dir(tmp_path):
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    folder = tmp_path / "base"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _write(src, out, step, kill_at=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("UNIERASE_TEST_KILL_AT", None)
    if kill_at:
        env["UNIERASE_TEST_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-c", WRITER, str(src), str(out), str(step)], env=env, capture_output=True, text=True)


def test_a_writer_killed_at_any_point_leaves_the_previous_output(model_dir, tmp_path):
    out = tmp_path / "out"
    assert _write(model_dir, out, 0.01).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for point in ("after-weights", "after-deltas", "after-ledger", "before-swap", "after-swap"):
        proc = _write(out, out, 0.02, kill_at=point)
        assert proc.returncode == -9, (point, proc.stderr[-500:])
        source = load_input(out)  # whatever happened, the directory reads back consistently
        if point == "after-swap":  # the new output was complete and in place; only the old copy is left behind
            assert source.manifest["step"] == 0.02 and len(source.ledger) == 2
            assert _write(out, out, -0.02).returncode == 0  # undo the step for the next points
            source = load_input(out)
            assert len(source.ledger) == 3
            before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        else:
            assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before, point
    assert _write(out, out, 0.03).returncode == 0
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.") and not p.name.endswith(".lock")]
    assert leftovers == []  # the next writer removed the killed writers' temporary folders


def test_an_interrupted_two_rename_swap_is_repaired(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("previous")
    os.replace(out, tmp_path / ".out.999999999.old")  # killed between the fallback's two renames
    recover_interrupted(out)
    assert (out / "a.txt").read_text() == "previous"


def test_a_second_writer_is_refused_with_the_holders_pid(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    requests = tmp_path / "r.jsonl"
    requests.write_text('{"question": "Who wrote Hamlet?"}\n')
    with DirectoryLock(out):
        code = main(["forget", "--model", str(model_dir), "--requests", str(requests), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"being written by unierase process {os.getpid()}" in err
    with DirectoryLock(model_dir):  # writing into a model someone reads (or the reverse) is refused too
        with pytest.raises(UniEraseError, match="being written"):
            with DirectoryLock(model_dir, exclusive=False):
                pass


def test_failed_writes_leave_nothing_behind(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "x").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- corrupted inputs

def _unierase_dir(model_dir, tmp_path):
    """A directory that looks like one UniErase round: manifest + state (shapes of the tiny model)."""
    folder = tmp_path / "edited"
    folder.mkdir()
    for p in model_dir.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / MANIFEST_FILE).write_text(json.dumps({"method": "unierase", "layers": [1], "rounds": [{"round": 1}]}))
    save_file({"layer1.previous_keys": torch.eye(64, dtype=torch.float64)}, str(folder / STATE_FILE))
    return folder


@pytest.mark.parametrize("damage,fragment", [
    (lambda f: (f / MANIFEST_FILE).write_text("{}"), "corrupt manifest"),
    (lambda f: (f / MANIFEST_FILE).write_text("[]"), "corrupt manifest"),
    (lambda f: (f / MANIFEST_FILE).write_bytes(os.urandom(200)), "corrupt manifest"),
    (lambda f: (f / MANIFEST_FILE).unlink(), "no unierase_manifest.json"),
    (lambda f: (f / STATE_FILE).unlink(), "is missing"),
    (lambda f: (f / STATE_FILE).write_bytes((f / STATE_FILE).read_bytes()[:100]), "unreadable edit state"),
    (lambda f: (f / STATE_FILE).write_bytes(b""), "unreadable edit state"),
    (lambda f: save_file({"layer1.previous_keys": torch.full((64, 64), float("nan"), dtype=torch.float64)},
                         str(f / STATE_FILE)), "NaN"),
    (lambda f: save_file({"layer1.previous_keys": torch.eye(8, dtype=torch.float64)}, str(f / STATE_FILE)), "dimensions"),
    (lambda f: (f / LEDGER_FILE).write_text('{"index": 0}\n'), "no hash"),
])
def test_corrupted_model_directories_are_refused(model_dir, tmp_path, capsys, damage, fragment):
    folder = _unierase_dir(model_dir, tmp_path)
    damage(folder)
    requests = tmp_path / "r.jsonl"
    requests.write_text('{"question": "Who wrote Hamlet?"}\n')
    code = main(["forget", "--model", str(folder), "--requests", str(requests), "--out", str(tmp_path / "o"),
                 "--stats-tokens", "2000", "--layers", "1"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("unierase:")]
    assert code == 2 and len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "o").exists()


def test_a_truncated_weights_file_is_one_line(model_dir, tmp_path, capsys):
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(["ask", "--model", str(model_dir), "Who?"]) == 2
    assert "cannot load model" in capsys.readouterr().err


# ----------------------------------------------------------------------------- first-use findings

@pytest.mark.parametrize("args,fragment", [
    (["--layers", "a,b"], "--layers takes comma-separated layer numbers"),
    (["--stats-tokens", "0"], "stats_tokens must be at least"),
    (["--stats-tokens", "-5"], "stats_tokens must be at least"),
    (["--max-passes", "0"], "max_passes must be at least 1"),
])
def test_bad_flags_fail_before_any_work(model_dir, tmp_path, capsys, args, fragment):
    requests = tmp_path / "r.jsonl"
    requests.write_text('{"question": "Who wrote Hamlet?"}\n')
    code = main(["forget", "--model", str(model_dir), "--requests", str(requests), "--out", str(tmp_path / "o"), *args])
    assert code == 2 and fragment in capsys.readouterr().err


@pytest.mark.parametrize("content,fragment", [
    (b'{"question": "Qu\xe9bec?"}\n', "not UTF-8"),
    (b'{"question": "' + b"x" * 30000 + b'"}\n', "characters long"),
    (b'{"question": "\\ud800?"}\n', "lone UTF-16 surrogate"),
    (b"[" * 100000 + b"]" * 100000 + b"\n", "nested too deeply"),
])
def test_bad_request_bytes_are_one_line(model_dir, tmp_path, capsys, content, fragment):
    requests = tmp_path / "r.jsonl"
    requests.write_bytes(content)
    code = main(["forget", "--model", str(model_dir), "--requests", str(requests), "--out", str(tmp_path / "o")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("unierase:")]
    assert code == 2 and len(err) == 1 and fragment in err[0], err


def test_bom_crlf_unknown_fields_and_duplicates(tmp_path, caplog):
    from unierase.requests import load_requests

    path = tmp_path / "r.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"question": "Who wrote Hamlet?", "colour": "red"}\r\n{"question": "Who wrote Hamlet?"}\r\n')
    with caplog.at_level(logging.WARNING):
        requests = load_requests(path)
    assert [r.question for r in requests] == ["Who wrote Hamlet?"] * 2
    assert "unknown field(s) 'colour'" in caplog.text and "the same question as" in caplog.text


def test_outputs_that_would_destroy_a_model_are_refused(model_dir, tmp_path, capsys, monkeypatch):
    requests = tmp_path / "r.jsonl"
    requests.write_text('{"question": "Who wrote Hamlet?"}\n')
    # --out = --model on a plain model folder: the user's original model
    assert main(["forget", "--model", str(model_dir), "--requests", str(requests), "--out", str(model_dir)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # …also when a fine-tuning wrote it (a target model is someone's original too)
    (model_dir / MANIFEST_FILE).write_text(json.dumps({"method": "finetune"}))
    assert main(["forget", "--model", str(model_dir), "--requests", str(requests), "--out", str(model_dir)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    (model_dir / MANIFEST_FILE).unlink()
    # the cached default model, even with --overwrite
    cache = tmp_path / "cache"
    monkeypatch.setenv("UNIERASE_CACHE", str(cache))
    target = cache / "models" / "smollm2-135m-instruct"
    target.mkdir(parents=True)
    assert main(["forget", "--model", str(model_dir), "--requests", str(requests), "--out", str(target), "--overwrite"]) == 2
    assert "inside the model cache" in capsys.readouterr().err
    # a parent that is a file fails at once
    (tmp_path / "file").write_text("x")
    assert main(["forget", "--model", str(model_dir), "--requests", str(requests), "--out", str(tmp_path / "file" / "o")]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_an_unwritable_parent_fails_at_once(model_dir, tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    requests = tmp_path / "r.jsonl"
    requests.write_text('{"question": "Who wrote Hamlet?"}\n')
    assert main(["forget", "--model", str(model_dir), "--requests", str(requests), "--out", str(locked / "o")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_missing_relative_model_path_is_not_a_hub_id(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert main(["ask", "--model", "runs/target", "Who?"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_ask_checks_lengths_against_the_context(model_dir, capsys):
    assert main(["ask", "--model", str(model_dir), "--max-new-tokens", "100000", "Who?"]) == 2
    assert "does not fit the model's context" in capsys.readouterr().err
    assert main(["ask", "--model", str(model_dir), "--max-new-tokens", "0", "Who?"]) == 2
    assert main(["ask", "--model", str(model_dir), "Why? " * 2000]) == 2
    assert "context" in capsys.readouterr().err


def test_non_finite_weights_are_never_saved(model_dir, tmp_path):
    from unierase.models.loading import load_model
    from unierase.record.rounds import save_round, start_round

    model, tok = load_model(model_dir)
    start = start_round(model)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.fill_(float("nan"))
    with pytest.raises(UniEraseError, match="non-finite"):
        save_round(tmp_path / "o", model, tok, start, load_input(model_dir), manifest={"method": "x"}, entry={"kind": "erase"})
    assert not (tmp_path / "o").exists()


def test_outputs_are_not_private(tmp_path):
    from unierase.storage import write_text_atomic

    mask = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "out") as tmp:
            write_text_atomic(tmp / "a.json", "{}")
    finally:
        os.umask(mask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "a.json").stat().st_mode & 0o777 == 0o644
