"""``unierase eval --benchmark return``: real people (RETURN) on the model at hand.

Given the people erased and their neighbours (``--people``: the ``forget_people`` and
``neighbour_people`` of ``benchmarks/results/return.json``, or a JSON ``{"forget": […],
"neighbours": […]}``), each person's 20 questions are asked; a forget person's question counts as
refused when the answer is a refusal (or the unlearning token alone), a neighbour's as right by the
content-word judge (``return_set.judge``). The forget people's questions are also asked in a
rewording (``rewordings.REWORDING_FRAMES[0]``: RETURN has no paraphrases), and membership inference
compares the forget people's gold answers with the neighbours' (LOSS, zlib, Min-K, Min-K++ AUCs).
Without ``--people`` every person is a neighbour: how many people the model knows.

Writes ``OUT/summary.json`` and ``OUT/per_person.jsonl`` (atomically; an existing ``OUT`` is kept
unless ``overwrite``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..storage import UniEraseError, check_output_dir, write_json_atomic, write_text_atomic
from .return_set import JUDGE_RECALL, Person, accuracy, ask_people, load_return


@dataclass
class ReturnEvalConfig:
    people: str | None = None
    """JSON naming the forget and neighbour people (``None``: every person is a neighbour)."""
    max_new_tokens: int = 48
    """Greedy answer length."""
    min_accuracy: float = 0.5
    """A person counts as known at this accuracy or more."""
    max_people: int | None = None
    """Without ``people``: only the first N people of the file (a quick look)."""
    membership: bool = True
    """Membership inference of the forget people's gold answers against the neighbours'."""


def wilson(successes: int, n: int, z: float = 1.96) -> list[float] | None:
    """The 95 % Wilson score interval of a share (with few people it says how little is known)."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def share(flags: list[bool]) -> dict:
    """A share with its count and 95 % Wilson interval."""
    return {"value": round(sum(flags) / len(flags), 4) if flags else None, "n": len(flags),
            "ci95": wilson(sum(flags), len(flags))}


def read_people_split(path: str | os.PathLike, people: list[Person]) -> tuple[list[Person], list[Person]]:
    """(forget people, neighbour people) named by ``path``; an unknown name or a missing field is an
    error naming the file and the field."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UniEraseError(f"{path}: cannot read the people file ({err})") from None
    by_name = {p.name: p for p in people}
    chosen = []
    for keys in (("forget", "forget_people"), ("neighbours", "neighbour_people")):
        field = next((k for k in keys if k in data), None) if isinstance(data, dict) else None
        if field is None or not isinstance(data[field], list):
            raise UniEraseError(f"{path}: needs a list '{keys[0]}' (or '{keys[1]}') of RETURN names")
        unknown = [n for n in data[field] if n not in by_name]
        if unknown:
            raise UniEraseError(f"{path}: '{field}' names {unknown[0]!r}, who is not in the RETURN file")
        chosen.append([by_name[n] for n in data[field]])
    return chosen[0], chosen[1]


def _refused(text: str) -> bool:
    from ..refusals import is_refusal

    return is_refusal(text) or not text.strip()  # the token alone decodes to nothing


def _membership(model, tokenizer, forget: list[Person], neighbours: list[Person]) -> dict | None:
    from ..prompts import has_chat_template
    from .mia import membership
    from .scoring import answer_token_statistics

    if not forget or not neighbours:
        return None
    groups = []
    for people in (forget, neighbours):
        questions = [q for p in people for q in p.questions]
        answers = [g for p in people for g in p.gold]
        items: list = [None] * len(questions)
        for batch, stats in answer_token_statistics(model, tokenizer, questions, answers,
                                                    chat=has_chat_template(tokenizer)):
            for i, s in zip(batch, stats):
                items[i] = s
        groups.append((items, answers))
    return membership(groups[0][0], groups[0][1], groups[1][0], groups[1][1])


def evaluate_return(model=None, out=None, *, tokenizer=None, data=None, config: ReturnEvalConfig | None = None,
                    overwrite: bool = False, cache_dir=None, device_map=None, dtype=None) -> dict:
    """The RETURN figures of ``model`` (a directory, or in memory with ``tokenizer``); written to
    ``out`` when given. Returns the summary."""
    from ..rewordings import REWORDING_FRAMES
    from ..record.rounds import load_checked_model
    from .data import DATA_ENV

    config = config or ReturnEvalConfig()
    if out is not None:
        check_output_dir(out, overwrite)
    root = data or os.environ.get(DATA_ENV)
    if root is None:
        raise UniEraseError(f"RETURN data not found: pass --data-dir DIR or set {DATA_ENV} to the folder holding return/")
    people = load_return(root)
    if config.people:
        forget, neighbours = read_people_split(config.people, people)
    else:
        forget, neighbours = [], people[: config.max_people]
    if tokenizer is None:
        model, tokenizer = load_checked_model(model, cache_dir=cache_dir, device_map=device_map, dtype=dtype)
    frame = REWORDING_FRAMES[0]
    reworded = [Person(p.name, [frame.format(q=q) for q in p.questions], p.gold) for p in forget]
    answers = ask_people(model, tokenizer, forget + reworded + neighbours, max_new_tokens=config.max_new_tokens)
    n = len(forget)
    rows = [{"name": p.name, "role": "forget", "refused": sum(map(_refused, a)) / len(a),
             "reworded_refused": sum(map(_refused, r)) / len(r), "accuracy": accuracy(a, p), "answers": a}
            for p, a, r in zip(forget, answers[:n], answers[n:2 * n])]
    rows += [{"name": p.name, "role": "neighbour", "accuracy": accuracy(a, p), "answers": a}
             for p, a in zip(neighbours, answers[2 * n:])]
    judged = [r["accuracy"] for r in rows if r["role"] == "neighbour" and r["accuracy"] is not None]
    forgotten = [r["accuracy"] for r in rows if r["role"] == "forget" and r["accuracy"] is not None]
    summary = {
        "benchmark": "return", "config": asdict(config),
        "judge": f"right when the answer holds ≥ {JUDGE_RECALL} of the gold answer's content words "
                 "(not in the question, not function words)",
        "forget_people": len(forget), "neighbour_people": len(neighbours),
        "forget_refused": share([_refused(t) for a in answers[:n] for t in a]),
        "reworded_refused": share([_refused(t) for a in answers[n:2 * n] for t in a]),
        # a fine-tuning baseline does not refuse: its forgetting shows as the forget people's accuracy
        "forget_accuracy": round(sum(forgotten) / len(forgotten), 4) if forgotten else None,
        "neighbour_accuracy": round(sum(judged) / len(judged), 4) if judged else None,
        "known_neighbours": sum(a >= config.min_accuracy for a in judged),
        "membership": _membership(model, tokenizer, forget, neighbours) if config.membership else None,
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "per_person.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        write_json_atomic(out / "summary.json", summary)
    return summary
