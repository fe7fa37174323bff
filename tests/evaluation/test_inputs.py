"""Bad input gives one clear error naming the file and the column."""

import json

import pytest

from unierase.cli import main
from unierase.evaluation import evaluate
from unierase.evaluation.data import load_set, resolve_data
from unierase.storage import UniEraseError


def _rewrite(path, fn):
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps(fn(r)) + "\n" for r in rows))


def test_missing_split_file(tiny_tofu):
    (tiny_tofu / "retain_perturbed.jsonl").unlink()
    with pytest.raises(UniEraseError, match=r"retain_perturbed\.jsonl not found"):
        load_set(resolve_data(str(tiny_tofu)), "retain", "forget10")


def test_missing_column_names_file_row_and_column(tiny_tofu):
    _rewrite(tiny_tofu / "forget10_perturbed.jsonl", lambda r: {k: v for k, v in r.items() if k != "paraphrased_answer"})
    with pytest.raises(UniEraseError) as err:
        load_set(resolve_data(str(tiny_tofu)), "forget", "forget10")
    assert "forget10_perturbed.jsonl" in str(err.value) and "'paraphrased_answer'" in str(err.value) and "row 0" in str(err.value)


def test_bad_perturbed_column(tiny_tofu):
    _rewrite(tiny_tofu / "world_facts_perturbed.jsonl", lambda r: {**r, "perturbed_answer": "not a list"})
    with pytest.raises(UniEraseError, match=r"world_facts_perturbed\.jsonl: row 0, column 'perturbed_answer'"):
        load_set(resolve_data(str(tiny_tofu)), "world_facts", "forget10")


def test_empty_split(tiny_tofu):
    (tiny_tofu / "real_authors_perturbed.jsonl").write_text("")
    with pytest.raises(UniEraseError, match=r"real_authors_perturbed\.jsonl is empty"):
        load_set(resolve_data(str(tiny_tofu)), "real_authors", "forget10")


def test_data_location_errors(tmp_path, monkeypatch):
    with pytest.raises(UniEraseError, match="does not exist"):
        resolve_data(str(tmp_path / "nope"))
    monkeypatch.setenv("UNIERASE_DATA", str(tmp_path))
    assert resolve_data().local_dir == tmp_path
    (tmp_path / "tofu").mkdir()
    assert resolve_data().local_dir == tmp_path / "tofu"  # a parent of tofu/ is accepted
    assert resolve_data("locuslab/TOFU").hub_id == "locuslab/TOFU"


def test_model_without_chat_template(tiny_tofu, tiny_model, tokenizer, tmp_path):
    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(UniEraseError, match="no chat template.*--prompt-format plain"):
        evaluate(tiny_model, tmp_path / "out", tokenizer=plain, data=str(tiny_tofu))


def test_cli_reports_missing_file_on_one_line(tiny_tofu, tmp_path, capsys):
    (tiny_tofu / "forget10_perturbed.jsonl").unlink()
    code = main(["eval", "--out", str(tmp_path / "out"), "--data-dir", str(tiny_tofu)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("unierase: error:") and "forget10_perturbed.jsonl not found" in err and "\n" not in err
