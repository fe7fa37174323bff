"""evaluation/return_set.py: reading RETURN, the judge, and choosing the people a model knows."""

import json

import pytest

from unierase.evaluation.return_set import (content_recall, judge, judge_agreement, known_people, load_return,
                                            split_people)
from unierase.storage import UniEraseError


def _write(path, people):
    path.write_text("".join(json.dumps({"name": name, "data": [
        {"question": q, "gold_answer": g, "nli_result": {"label": "entailment"}} for q, g in qa]}) + "\n"
        for name, qa in people), encoding="utf-8")
    return path


def test_the_judge_counts_the_gold_answers_own_words_only():
    question = "Where was Ada Lovelace born?"
    assert content_recall("Ada Lovelace was born somewhere.", "Ada Lovelace was born in London.", question) == 0.0
    assert judge("She was born in London, England.", "Ada Lovelace was born in London.", question) is True
    assert judge("Paris.", "She was born in London, England.", question) is False
    assert judge("anything", "Ada Lovelace was born.", question) is None  # nothing of its own to check


def test_bad_files_name_the_line_and_field(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"name": "A", "data": [{"question": "Q?"}]}\n')
    with pytest.raises(UniEraseError, match=r"bad.jsonl:1: data\[0\] has no string 'gold_answer'"):
        load_return(tmp_path / "bad.jsonl")
    with pytest.raises(UniEraseError, match="not found"):
        load_return(tmp_path / "nowhere")


def test_selection_on_a_tiny_model_and_on_given_answers(tiny_model, tokenizer, tmp_path):
    """A tiny random model knows nobody (its answers give no gold word); answers that repeat one
    person's gold answers make exactly that person known."""
    from unierase.evaluation.return_set import ask_people

    questions = ["Who is Ada Quill?", "Where was Ada Quill born?", "What did Ada Quill write?"]
    gold = ["Ada Quill is a poet from Wales.", "She was born in Cardiff in 1901.", "She wrote twelve sonnet cycles."]
    path = _write(tmp_path / "return.jsonl", [
        ("Ada Quill", list(zip(questions, gold))),
        ("Bo Reed", [(q.replace("Ada Quill", "Bo Reed"), g.replace("Ada Quill", "Bo Reed")) for q, g in zip(questions, gold)])])
    people = load_return(path)
    answers = ask_people(tiny_model, tokenizer, people, max_new_tokens=8)
    assert [len(a) for a in answers] == [3, 3] and known_people(people, answers, 0.5) == []
    given = [gold, ["I do not know.", "Somewhere.", "Nothing."]]
    assert [(p.name, acc) for p, acc in known_people(people, given, 0.8)] == [("Ada Quill", 1.0)]
    assert judge_agreement(people, given) == {"answers": 6, "with_entailment": 0.5, "with_not_contradiction": 0.5}


def test_split_alternates_forget_and_neighbour_people():
    known = list("abcdefg")
    assert split_people(known) == (["a", "c", "e", "g"], ["b", "d", "f"])
    assert split_people(["a"]) == (["a"], [])
