"""evaluation/return_eval.py: ``unierase eval --benchmark return`` on a tiny model and a small RETURN file."""

import json

import pytest

from unierase.evaluation.return_eval import ReturnEvalConfig, evaluate_return, read_people_split, share, wilson
from unierase.evaluation.return_set import load_return
from unierase.storage import UniEraseError


def _data(tmp_path):
    people = {"Ada Quill": ["London", "poems", "1815"], "Ben Oaks": ["Paris", "novels", "1902"],
              "Cy Reed": ["Rome", "plays", "1770"]}
    lines = [json.dumps({"name": name, "data": [
        {"question": f"Where was {name} born?", "gold_answer": f"{name} was born in {facts[0]}."},
        {"question": f"What did {name} write?", "gold_answer": f"{name} wrote {facts[1]}."},
        {"question": f"When was {name} born?", "gold_answer": f"{name} was born in {facts[2]}."}]})
        for name, facts in people.items()]
    (tmp_path / "return").mkdir()
    (tmp_path / "return" / "RETURN_llama3-8b_acc80%.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_wilson_interval_and_share():
    assert wilson(0, 0) is None
    low, high = wilson(19, 20)
    assert 0.75 < low < 0.95 < high <= 1.0  # hand-checked: [0.7639, 0.9911]
    assert share([True, False]) == {"value": 0.5, "n": 2, "ci95": wilson(1, 2)}


def test_the_people_file_names_known_people(tmp_path):
    people = load_return(_data(tmp_path))
    (tmp_path / "split.json").write_text(json.dumps({"forget_people": ["Ada Quill"], "neighbour_people": ["Cy Reed"]}))
    forget, neighbours = read_people_split(tmp_path / "split.json", people)
    assert [p.name for p in forget] == ["Ada Quill"] and [p.name for p in neighbours] == ["Cy Reed"]
    (tmp_path / "bad.json").write_text(json.dumps({"forget": ["Nobody"], "neighbours": []}))
    with pytest.raises(UniEraseError, match=r"bad.json: 'forget' names 'Nobody'"):
        read_people_split(tmp_path / "bad.json", people)
    (tmp_path / "half.json").write_text(json.dumps({"forget": ["Ada Quill"]}))
    with pytest.raises(UniEraseError, match=r"half.json: needs a list 'neighbours'"):
        read_people_split(tmp_path / "half.json", people)


def test_return_evaluation_on_a_tiny_model(tmp_path, monkeypatch, tiny_model, tokenizer):
    """Forget and neighbour people asked, their figures and membership AUCs written; a refusal counts as refused."""
    from unierase.evaluation import return_eval

    data = _data(tmp_path)
    (tmp_path / "split.json").write_text(json.dumps({"forget": ["Ada Quill"], "neighbours": ["Ben Oaks", "Cy Reed"]}))
    config = ReturnEvalConfig(people=str(tmp_path / "split.json"), max_new_tokens=4)
    summary = evaluate_return(tiny_model, tmp_path / "out", tokenizer=tokenizer, data=data, config=config)
    assert summary["forget_people"] == 1 and summary["neighbour_people"] == 2
    assert summary["forget_refused"]["n"] == 3 and summary["reworded_refused"]["n"] == 3
    assert set(summary["membership"]["auc"]) == {"loss", "zlib", "min_k", "min_k++"}
    rows = [json.loads(x) for x in (tmp_path / "out" / "per_person.jsonl").read_text().splitlines()]
    assert [r["role"] for r in rows] == ["forget", "neighbour", "neighbour"]
    with pytest.raises(UniEraseError):  # an existing output is kept unless asked
        evaluate_return(tiny_model, tmp_path / "out", tokenizer=tokenizer, data=data, config=config)
    monkeypatch.setattr(return_eval, "ask_people", lambda model, tok, people, max_new_tokens: [
        ["I'm sorry, I can't help with that."] * len(p.questions) if k < 2 else list(p.gold)
        for k, p in enumerate(people)])
    summary = evaluate_return(tiny_model, None, tokenizer=tokenizer, data=data, config=config)
    assert summary["forget_refused"]["value"] == summary["reworded_refused"]["value"] == 1.0
    assert summary["neighbour_accuracy"] == 1.0 and summary["known_neighbours"] == 2
    assert summary["forget_accuracy"] == 0.0  # refused: none of the forget person's answers is right


def test_unierase_eval_benchmark_return(tmp_path, tiny_model_dir, capsys):
    from unierase.cli import main

    data = _data(tmp_path)
    assert main(["eval", "--benchmark", "return", "--model", str(tiny_model_dir), "--out", str(tmp_path / "out"),
                 "--data-dir", str(data), "--max-people", "2", "--max-new-tokens", "4", "--no-membership"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["neighbour_people"] == 2 and printed["forget_people"] == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["membership"] is None
