"""Entity scope erases the people the user means, not the dates and places their questions mention.

On a small TOFU target (``unierase finetune --data tofu:full --authors 6 --forget-authors 2``: four
retain authors and the two forget01 authors; built here once and cached when missing), erases the
40 forget01 questions (questions only, ``--scope entity``) and asks the target and the erased model
``benchmarks/data/forget01_mentions.jsonl``: 24 general questions about the months, dates, countries,
cities and other names the forget questions mention ("How many days are in February?", "Tell me
about Kuwait.") and 6 open questions about the two authors (two of them turned out to be worded as
one of the neutral questions the edit adds as targets: the figures count the unseen ones apart). A
question counts as refused when its greedy answer starts with the unlearning token or is a refusal. Also: the share of forget questions and of their paraphrases refused, and what the
round's scope record says (entities, attributed and unattributed requests).

    python benchmarks/entity_attribution.py [--target DIR] [--data-dir ../shared/data]

The choice this measures (attribution by evidence, dates and places never entities without a
subject) was made from the issue's description of the failure, not from these questions: they were
written before the first run and are not used to choose anything.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from rows import repo_commit  # the sibling module

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "entity_attribution.json"
MENTIONS = HERE / "data" / "forget01_mentions.jsonl"


def _target(path: Path, data_dir: str | None) -> None:
    """Build the 6-author target once (a few minutes in bf16 on two cores)."""
    if (path / "config.json").is_file():
        return
    cmd = [sys.executable, "-m", "unierase.cli", "finetune", "--data", "tofu:full", "--authors", "6", "--forget-authors",
           "2", "--out", str(path), "--bf16", "--eval-items", "40", "--no-progress"]
    subprocess.run(cmd + (["--data-dir", data_dir] if data_dir else []), check=True)


def _ask(model, tokenizer, questions: list[str], token: str, refusal: str | None = None) -> list[dict]:
    """Greedy answers (``refusals.STRAY_TOKENS`` tokens) and the shared checks of each one."""
    from unierase.generation import generate_answer_ids
    from unierase.refusals import STRAY_TOKENS, holds_token, is_chosen_refusal, is_refusal

    token_id = tokenizer.get_vocab().get(token)
    out = []
    for question, ids in zip(questions, generate_answer_ids(model, tokenizer, questions, max_new_tokens=STRAY_TOKENS)):
        clean = tokenizer.decode(ids, skip_special_tokens=True).strip()
        first = bool(ids) and ids[0] == token_id
        out.append({"question": question, "answer": clean, "token_first": first,
                    "refused": first or is_refusal(clean), "token_anywhere": holds_token(ids, token_id),
                    "chosen_refusal": bool(refusal) and is_chosen_refusal(clean, refusal)})
    return out


def _share(items: list[dict], key: str = "refused") -> float:
    return round(sum(x[key] for x in items) / max(1, len(items)), 4)


def main() -> None:
    import unierase
    from unierase.baselines.data import require_data_dir
    from unierase.models.loading import load_model
    from unierase.storage import default_cache_dir, write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default=str(default_cache_dir() / "targets" / "tofu6"),
                        help="the TOFU target (default: <cache>/targets/tofu6, built when missing)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--work", default=None, help="where the erased model goes (default: <cache>/entity_attribution)")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    target, work = Path(args.target), Path(args.work or default_cache_dir() / "entity_attribution")
    _target(target, args.data_dir)
    rows = [json.loads(x) for x in (require_data_dir(args.data_dir) / "tofu" / "forget01_perturbed.jsonl").read_text()
            .splitlines() if x.strip()]
    mentions = [json.loads(x) for x in MENTIONS.read_text().splitlines() if x.strip()]

    started = time.perf_counter()
    result = unierase.forget([{"question": r["question"]} for r in rows], work / "erased", model=str(target),
                             scope="entity", overwrite=True, progress=False)
    edit_s = time.perf_counter() - started
    last = result.manifest["rounds"][-1]
    token = result.manifest["token"]["string"]
    refusal = last["hyperparameters"].get("refusal")

    before_model, before_tok = load_model(str(target))
    before = _ask(before_model, before_tok, [m["question"] for m in mentions], token)
    del before_model
    model, tok = load_model(str(work / "erased"))
    after = _ask(model, tok, [m["question"] for m in mentions], token)
    forget = _ask(model, tok, [r["question"] for r in rows], token, refusal)
    paraphrases = _ask(model, tok, [r["paraphrased_question"] for r in rows], token, refusal)

    general = [dict(m, before=b, after=a) for m, b, a in zip(mentions, before, after) if m["role"] == "general"]
    answered = [g for g in general if not g["before"]["refused"]]
    opened = [dict(m, before=b, after=a) for m, b, a in zip(mentions, before, after) if m["role"] == "open"]
    added = {q for e in last["scope"]["entities"] for q in e["added"]}
    unseen = [o for o in opened if o["question"] not in added]
    commit = repo_commit()
    figures = {
        "what": "entity scope on forget01 (questions only): general questions about what the forget questions mention, "
                "and open questions about the two authors",
        "target": {"authors": 6, "forget_authors": 2, "command": "unierase finetune --data tofu:full --authors 6 "
                   "--forget-authors 2 --bf16 --eval-items 40"},
        "general_questions": len(general),
        "general_answered_by_target": len(answered),
        "general_refused_after": sum(g["after"]["refused"] for g in answered),
        "general_token_anywhere_after": sum(g["after"]["token_anywhere"] for g in general),
        "open_refused_after": _share([o["after"] for o in opened]),
        "open_unseen": len(unseen),
        "open_unseen_refused_after": _share([o["after"] for o in unseen]),
        "open_refused_before": _share([o["before"] for o in opened]),
        "forget_token_first": _share(forget, "token_first"),
        "paraphrases_token_first": _share(paraphrases, "token_first"),
        "refusal": refusal,
        "forget_chosen_refusal": _share(forget, "chosen_refusal"),
        "paraphrases_chosen_refusal": _share(paraphrases, "chosen_refusal"),
        "stray_window": 64,
        "scope": {"entities": [{k: e[k] for k in ("entity", "from", "person", "requests", "attributed", "added")}
                               for e in last["scope"]["entities"]],
                  "unattributed": [rows[i]["question"] for i in last["scope"]["unattributed"]]},
        "recipe": last.get("recipe"),
        "edit_seconds": round(edit_s, 1),
        "timings_s": last["timings_s"],
        "general": general,
        "open": opened,
        "commit": commit,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch threads default",
    }
    write_json_atomic(args.results, figures)
    print(json.dumps({k: v for k, v in figures.items() if k not in ("general", "open", "timings_s")}, indent=2))


if __name__ == "__main__":
    main()
