"""RETURN for the model at hand: erase real people it knows, keep the people it knows beside them.

Steps, each cached under ``--work`` (default ``<cache>/bench_return``; a killed run continues):

- ``answers``: the model's greedy answers to all 20 questions of every RETURN person (9,320
  questions), judged against the gold answers (``evaluation.return_set.judge``); the judge's
  agreement with the file's NLI labels on Llama-3-8B's answers is recorded beside it.
- ``known``: the people the model answers at least ``--min-accuracy`` of the questions of, split
  into forget and neighbour people (``split_people``: every other one, in file order).
- ``unierase``: the forget people erased with entity scope (questions only, each person's name as
  the subject), then every known person's questions and a reworded copy of the forget people's
  questions (the audit's first rewording frame) asked again.
- ``<baseline>``: the two baselines of highest Forget Efficacy that keep Model Utility in the TOFU
  benchmark's record (``results/tofu/bench.json``), at its recorded settings, forget = the forget
  people's questions with their gold answers, retain = the neighbour people's.

With ``--target-people N`` the model at hand is a *RETURN target* instead of the default model:
the default model fine-tuned (``unierase finetune``, its default settings) on the question/gold-answer
pairs of the first N people of the file whose name is in at least ``NAMED_SHARE`` of their own
questions (so entity scope has a name to key on). It is how TOFU makes a model know its fictitious
authors, done with real ones: the default model knows no RETURN person by itself. Every step then
runs on the target, under ``<work>/target-N``, and the results go to ``results/return_target.json``.

Each model is measured by ``unierase eval --benchmark return`` (``evaluation.return_eval``).
Writes ``benchmarks/results/return.json``: the number of known people, the judge rule and its
agreement, per method the share of the forget people's questions refused (answer starts with the
token or is a refusal) and of their rewordings, the neighbour people's accuracy before and after,
with 95 % Wilson intervals, the membership AUCs (forget people's gold answers against the
neighbours'), and per person the same.

    python benchmarks/bench_return.py [--min-accuracy 0.5] [--max-people N] [--target-people N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rows import repo_commit  # the sibling module

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "return.json"
TARGET_RESULTS = HERE / "results" / "return_target.json"
NAMED_SHARE = 0.75
"""A person is taught to a RETURN target only when at least this share of their questions name them."""
TOFU_RECORD = HERE / "results" / "tofu" / "bench.json"
ANSWER_CHUNK = 40
"""People asked per cached step of the ``answers`` step (800 questions)."""


def best_baselines(record: Path, count: int = 2) -> list[tuple[str, dict]]:
    """The baselines the TOFU benchmark audits (``bench_tofu.audited_methods``: highest Forget
    Efficacy among those keeping Model Utility), with the learning rate and epochs it chose."""
    from bench_tofu import audited_methods

    figures = json.loads(record.read_text())
    chosen = [m for m in audited_methods(figures, count) if m != "unierase"]
    return [(m, {k: figures["methods"][m]["run"][k] for k in ("lr", "epochs")}) for m in chosen]


def named_people(people, count: int) -> list:
    """The first ``count`` people of the file whose name is in at least ``NAMED_SHARE`` of their
    questions (RETURN also holds one-word entries such as "Heath" that its questions never name)."""
    named = [p for p in people if sum(p.name in q for q in p.questions) >= NAMED_SHARE * len(p.questions)]
    return named[:count]


def build_target(base: str, people, work: Path) -> str:
    """The default model fine-tuned on ``people``'s question/gold-answer pairs (cached in ``work``)."""
    from unierase.baselines.finetune import finetune

    out = work / "model"
    if not (out / "unierase_manifest.json").is_file():
        data = work / "train.jsonl"
        data.write_text("".join(json.dumps({"question": q, "answer": g}) + "\n"
                                for p in people for q, g in zip(p.questions, p.gold)), encoding="utf-8")
        print(finetune(base, str(data), out, overwrite=True).summary(), flush=True)
    return str(out)


def _asked(model_dir, people, max_new_tokens: int) -> list[list[str]]:
    from unierase.evaluation.return_set import ask_people
    from unierase.record.rounds import load_checked_model

    model, tokenizer = load_checked_model(model_dir)
    return ask_people(model, tokenizer, people, max_new_tokens=max_new_tokens)


def _measure(model_dir, forget, neighbours, args, work: Path) -> dict:
    """Per person, on ``model_dir`` (``unierase eval --benchmark return``): forget people's questions
    refused (and reworded ones), neighbour people's accuracy; and the membership AUCs."""
    from unierase.evaluation.return_eval import ReturnEvalConfig, evaluate_return

    split = work / "people.json"
    split.write_text(json.dumps({"forget": [p.name for p in forget], "neighbours": [p.name for p in neighbours]}))
    out = work / f"eval-{Path(model_dir).name}"
    summary = evaluate_return(model_dir, out, data=args.data_dir, overwrite=True,
                              config=ReturnEvalConfig(people=str(split), max_new_tokens=args.max_new_tokens))
    rows = [json.loads(x) for x in (out / "per_person.jsonl").read_text().splitlines()]
    return {"forget": {r["name"]: r["refused"] for r in rows if r["role"] == "forget"},
            "reworded": {r["name"]: r["reworded_refused"] for r in rows if r["role"] == "forget"},
            "neighbours": {r["name"]: r["accuracy"] for r in rows if r["role"] == "neighbour"},
            "summary": {k: summary[k] for k in ("forget_refused", "reworded_refused", "forget_accuracy",
                                                "neighbour_accuracy", "membership")}}


def main() -> None:
    import unierase
    from entity_scope import _cached  # the same finished-step cache as the entity-scope benchmark
    from unierase.evaluation.return_eval import share
    from unierase.evaluation.return_set import (JUDGE_RECALL, accuracy, judge_agreement, known_people, load_return,
                                                split_people)
    from unierase.models.loading import default_model_dir
    from unierase.storage import default_cache_dir, write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--min-accuracy", type=float, default=0.5)
    parser.add_argument("--max-people", type=int, default=None, help="only the first N people of the file (a quick run)")
    parser.add_argument("--target-people", type=int, default=None,
                        help="measure a RETURN target: the default model fine-tuned on this many named people")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--work", default=None)
    parser.add_argument("--results", default=None, help="default: results/return.json, or return_target.json "
                                                            "with --target-people")
    args = parser.parse_args()
    work = Path(args.work) if args.work else default_cache_dir() / "bench_return"
    people = load_return(args.data_dir)
    model = str(default_model_dir(None))
    setting = "SmolLM2-135M-Instruct"
    if args.target_people:
        people = named_people(people, args.target_people)
        work = work / f"target-{args.target_people}"
        work.mkdir(parents=True, exist_ok=True)
        model = build_target(model, people, work)
        setting += f" fine-tuned on the QA of {len(people)} named RETURN people (a RETURN target)"
        made = json.loads((Path(model) / "unierase_manifest.json").read_text())
        target = {"people": [p.name for p in people], "train_seconds": made["timings_s"]["train"],
                  "steps": made["train"]["steps"], "memorisation_rougeL_recall": made["memorisation"]["rougeL_recall"]}
    else:
        target = None
    people = people[: args.max_people]
    work.mkdir(parents=True, exist_ok=True)
    lines = Path(args.data_dir, "return", "RETURN_llama3-8b_acc80%.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    llama = {row["name"]: [item.get("pred_answer", "") for item in row["data"]] for row in rows}
    agreement = judge_agreement(people, [llama[p.name] for p in people])
    answers = []  # asked in chunks of people, each cached: a stopped run keeps what it asked
    for start in range(0, len(people), ANSWER_CHUNK):
        chunk = people[start:start + ANSWER_CHUNK]
        answers += _cached(work / f"answers-{args.max_new_tokens}-{start}-{start + len(chunk)}.json",
                           lambda chunk=chunk: _asked(model, chunk, args.max_new_tokens))
    known = known_people(people, answers, args.min_accuracy)
    scored = [(accuracy(a, p), p) for a, p in zip(answers, people)]
    judged, judged_people = [acc for acc, _ in scored if acc is not None], [p for acc, p in scored if acc is not None]
    forget, neighbours = split_people([p for p, _ in known])
    print(f"{len(known)} of {len(people)} people known (accuracy ≥ {args.min_accuracy}); forget {len(forget)}, "
          f"neighbours {len(neighbours)}", flush=True)
    before = {p.name: acc for p, acc in known}
    methods = {}
    if forget:
        requests = [{"question": q, "scope": "entity", **({"subject": p.name} if p.name in q else {})}
                    for p in forget for q in p.questions]
        out = work / "unierase"

        def erase():
            if not (out / "unierase_manifest.json").is_file():  # a measurement redone keeps the erased model
                unierase.forget(requests, out, model=model, overwrite=True, progress=False)
            return _measure(str(out), forget, neighbours, args, work)

        methods["unierase"] = _cached(work / "unierase.json", erase)
        if TOFU_RECORD.is_file():
            for method, chosen in best_baselines(TOFU_RECORD):
                qa = lambda group: [{"question": q, "answer": g} for p in group for q, g in zip(p.questions, p.gold)]  # noqa: E731

                def train(method=method, chosen=chosen):
                    target = work / method
                    if not (target / "unierase_manifest.json").is_file():
                        unierase.forget(qa(forget), target, model=model, method=method, retain=qa(neighbours) or None,
                                        overwrite=True, progress=False, force=True, **chosen)
                    return _measure(str(target), forget, neighbours, args, work)

                methods[method] = _cached(work / f"{method}.json", train)
    summary = {m: {**r["summary"], "neighbour_accuracy_after": r["summary"]["neighbour_accuracy"]}
               for m, r in methods.items()}
    commit = repo_commit()
    results = Path(args.results or (TARGET_RESULTS if args.target_people else RESULTS))
    write_json_atomic(results, {
        "description": __doc__.split("\n\n")[0],
        "setting": f"{setting} fp32 CPU; {len(people)} RETURN people; greedy answers of "
                   f"{args.max_new_tokens} tokens; known = accuracy ≥ {args.min_accuracy}",
        "judge": {"rule": f"an answer is right when it holds ≥ {JUDGE_RECALL} of the gold answer's content words "
                          "(not in the question, not function words)", "agreement_with_file_nli": agreement},
        **({"target": target} if target else {}),
        "people": len(people), "known": len(known), "known_share": share([acc >= args.min_accuracy for acc in judged]),
        "accuracy_distribution": {f"≥ {t}": sum(acc >= t for acc in judged) for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.8)},
        "best_known": [{"name": p.name, "accuracy": round(acc, 4)}
                       for acc, p in sorted(zip(judged, judged_people), key=lambda x: -x[0])[:10]],
        "forget_people": [p.name for p in forget],
        "neighbour_people": [p.name for p in neighbours],
        "neighbour_accuracy_before": round(sum(before[p.name] for p in neighbours) / len(neighbours), 4) if neighbours else None,
        "forget_accuracy_before": round(sum(before[p.name] for p in forget) / len(forget), 4) if forget else None,
        "methods": summary, "per_person": methods, "commit": commit,
    })


if __name__ == "__main__":
    main()
