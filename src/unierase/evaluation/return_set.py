"""RETURN (Liu et al. 2024): real people from Wikipedia, 20 questions each with a gold answer.

The model at hand is asked every question; an answer counts as right by ``judge`` (no NLI model
installs offline): the share of the gold answer's content words — not in the question, not a
function word — that the answer contains reaches ``JUDGE_RECALL``. People whose questions the model
answers right at least ``min_accuracy`` of the time are the ones it *knows*: only they can be
erased and only they say whether an erasure spared the others. ``split_people`` parts the known
people into forget and neighbour people, the same way every time.

How often the judge agrees with the file's own NLI labels: ``judge_agreement`` (figures in docs/method.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..storage import UniEraseError, read_jsonl

RETURN_FILE = "RETURN_llama3-8b_acc80%.jsonl"
"""The RETURN subset shipped in the shared data (466 people × 20 questions)."""

JUDGE_RECALL = 0.5
"""Share of the gold answer's content words an answer must contain to count as right."""

_FUNCTION_WORDS = frozenset(
    "a an the of in on at to for by with and or but is was were are be been he she his her they their it its as "
    "from that this which who whom what when where why how did do does also has had have known born into".split())


@dataclass
class Person:
    name: str
    questions: list[str]
    gold: list[str]
    nli_labels: list[str | None] = field(default_factory=list)
    """The file's NLI label of Llama-3-8B's answer to each question (the file's own judge)."""


def load_return(path: str | Path) -> list[Person]:
    """The people of a RETURN JSONL file (``name``, ``data[{question, gold_answer, …}]``); a
    missing file or field is an error naming the file, the line and the field."""
    path = Path(path)
    if path.is_dir():
        path = path / RETURN_FILE if (path / RETURN_FILE).is_file() else path / "return" / RETURN_FILE
    if not path.is_file():
        raise UniEraseError(f"RETURN file {path} not found (expected {RETURN_FILE} in the data directory or its return/)")
    people = []
    for number, row in read_jsonl(path, what="RETURN file"):
        if not isinstance(row.get("name"), str) or not isinstance(row.get("data"), list) or not row["data"]:
            raise UniEraseError(f"{path}:{number}: needs a string 'name' and a non-empty list 'data'")
        for k, item in enumerate(row["data"]):
            for key in ("question", "gold_answer"):
                if not isinstance(item.get(key), str) or not item[key].strip():
                    raise UniEraseError(f"{path}:{number}: data[{k}] has no string '{key}'")
        people.append(Person(row["name"], [i["question"] for i in row["data"]], [i["gold_answer"] for i in row["data"]],
                             [(i.get("nli_result") or {}).get("label") for i in row["data"]]))
    if not people:
        raise UniEraseError(f"{path} holds no people")
    return people


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def content_recall(answer: str, gold: str, question: str) -> float | None:
    """The share of the gold answer's content words (not in the question, not function words) in
    ``answer``; ``None`` when the gold answer has none (it only restates the question)."""
    asked = set(_words(question))
    wanted = [w for w in _words(gold) if w not in _FUNCTION_WORDS and w not in asked]
    if not wanted:
        return None
    said = set(_words(answer))
    return sum(w in said for w in wanted) / len(wanted)


def judge(answer: str, gold: str, question: str) -> bool | None:
    """Whether ``answer`` gives the gold answer (``content_recall`` ≥ ``JUDGE_RECALL``); ``None``:
    not judgeable (the gold answer has no content word of its own)."""
    recall = content_recall(answer, gold, question)
    return None if recall is None else recall >= JUDGE_RECALL


def accuracy(answers: list[str], person: Person) -> float | None:
    """The share of a person's judgeable questions answered right."""
    verdicts = [judge(a, g, q) for a, g, q in zip(answers, person.gold, person.questions)]
    verdicts = [v for v in verdicts if v is not None]
    return sum(verdicts) / len(verdicts) if verdicts else None


def judge_agreement(people: list[Person], answers: list[list[str]]) -> dict:
    """How often ``judge`` agrees with the file's NLI labels on the same answers (entailment = right;
    and the lenient reading, anything but a contradiction = right)."""
    strict = lenient = n = 0
    for person, said in zip(people, answers):
        for a, g, q, label in zip(said, person.gold, person.questions, person.nli_labels):
            verdict = judge(a, g, q)
            if verdict is None or label is None:
                continue
            n += 1
            strict += verdict == (label == "entailment")
            lenient += verdict == (label != "contradiction")
    return {"answers": n, "with_entailment": round(strict / n, 4) if n else None,
            "with_not_contradiction": round(lenient / n, 4) if n else None}


def ask_people(model, tokenizer, people: list[Person], max_new_tokens: int = 48, batch_size: int = 128) -> list[list[str]]:
    """The model's greedy answers to every person's questions (one flat batch, then regrouped)."""
    from ..generation import generate_answers

    flat = generate_answers(model, tokenizer, [q for p in people for q in p.questions], max_new_tokens=max_new_tokens,
                            batch_size=batch_size)
    grouped, k = [], 0
    for person in people:
        grouped.append(flat[k:k + len(person.questions)])
        k += len(person.questions)
    return grouped


def known_people(people: list[Person], answers: list[list[str]], min_accuracy: float) -> list[tuple[Person, float]]:
    """The people whose questions the model answered right at least ``min_accuracy`` of the time,
    with that accuracy, in the file's order."""
    known = []
    for person, said in zip(people, answers):
        acc = accuracy(said, person)
        if acc is not None and acc >= min_accuracy:
            known.append((person, acc))
    return known


def split_people(known: list, forget_share: float = 0.5) -> tuple[list, list]:
    """Forget and neighbour people: every ``1 / forget_share``-th known person (in file order,
    from the first) is to be forgotten, the rest are neighbours; at least one of each when there are two."""
    if len(known) < 2:
        return list(known), []
    step = max(2, round(1 / forget_share)) if forget_share < 1 else 1
    forget = known[::step]
    neighbours = [p for i, p in enumerate(known) if i % step]
    return forget, neighbours
