"""Choose the entity-scope defaults on a tuning split that the acceptance figures never look at.

Tuning split: the first two authors of ``retain_perturbed`` (rows 0–39: Jaime Vasquez, Chukwu
Akabueze), erased from the TOFU benchmark target (``bench_tofu.py``: authors 0–19 + 198–199) with
their questions only. Scored on: the share of their 40 questions and 40 paraphrased questions whose
greedy first answer token is the unlearning token, the share of the other 18 retain authors'
questions (rows 40–399) that start with it, and the teacher-forced agreement with the target's own
greedy answers (32 tokens) on 100 of those questions and the share of their answers holding the token
within ``refusals.STRAY_TOKENS`` tokens, the share of the 40 forget answers (40 tokens)
that are a well-formed refusal, and the shared answer checks (``refusals.answer_checks``: exactly the
chosen refusal, the token repeated) of the forget and paraphrased answers (64 tokens), and the share
exactly the refusal without the generation config's rule that writes it (the token's own continuation); plus the
edit's time (token and statistics cached). The held-out split — the ``forget01`` authors — is what ``entity_scope.py`` reports.

    python benchmarks/entity_tuning.py --variant NAME [--set edit.field=value ...] [--split 2] [--scope entity]
        [--results FILE]

``--split 2`` erases the next two retain authors instead (rows 40–79: a second tuning split, for a
choice the first cannot settle), the others being every retain row outside it. Another target
(``--target``; its own ``--work``): ``--others-rows`` says how many retain rows it was trained on
(80 for a 6-author target, authors 0–3), so the other authors are ones it knows.

Each variant is one in-memory edit of a fresh copy of the target; a finished variant is cached under
``<cache>/entity_tuning`` and a re-run only adds the new ones to the results file.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from rows import repo_commit  # the sibling module

RESULTS = Path(__file__).parent / "results" / "entity_tuning.json"
SPLIT_ROWS = 40  # two authors' questions
RETAIN_ROWS = 400
AGREEMENT_QUESTIONS = 100


def _sections_set(settings: dict | None) -> dict:
    """The non-empty sections of ``parse_settings``' output (older cells list fewer empty ones)."""
    return {k: v for k, v in (settings or {}).items() if v}


def own_continuation(model, tok, questions: dict[str, list[str]], refusal: str, token_id: int) -> dict:
    """Per set of questions, the share answered with exactly ``refusal`` once the generation config's
    rule writing it after the token is lifted: what a runtime that ignores the config reads (the
    token's own continuation)."""
    from unierase.generation import generate_answer_ids
    from unierase.refusals import STRAY_TOKENS, answer_checks
    from unierase.token.placement import lead_into_refusal

    saved = copy.deepcopy(model.generation_config.sequence_bias)
    lead_into_refusal(model, token_id, None)
    try:
        out = {}
        for name, qs in questions.items():
            ids = generate_answer_ids(model, tok, qs, max_new_tokens=STRAY_TOKENS)
            texts = [tok.decode(a, skip_special_tokens=True) for a in ids]
            out[name] = answer_checks(texts, refusal=refusal, erased_ids=ids, token_id=token_id)["chosen_refusal"]
        return out
    finally:
        model.generation_config.sequence_bias = saved


def main() -> None:
    import torch

    import unierase
    from unierase.baselines.data import require_data_dir
    from unierase.generation import first_token_ids, generate_answer_ids, teacher_forced_agreement
    from unierase.models.loading import load_model
    from unierase.edit.recipes import edit_config_for, parse_settings, token_with_settings, with_settings
    from unierase.token.training import UnlearningTokenConfig
    from unierase.refusals import STRAY_TOKENS, answer_checks, is_chosen_refusal, is_well_formed_refusal
    from unierase.storage import default_cache_dir, write_json_atomic
    from bench_tofu import portable  # the sibling script's helper

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default=str(default_cache_dir() / "bench_tofu" / "models" / "full"))
    parser.add_argument("--variant", required=True, help="name of this variant in the results")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. entity_values.clamp_factor=0.5")
    parser.add_argument("--split", type=int, choices=(1, 2), default=1, help="which two retain authors to erase")
    parser.add_argument("--scope", choices=("auto", "entity"), default="auto",
                        help="the round's scope: 'entity' also attributes the questions that name no author "
                             "by the target's own answer (as `forget --scope entity`)")
    parser.add_argument("--others-rows", type=int, default=RETAIN_ROWS,
                        help="retain_perturbed rows the target was trained on (default: all 400; 80 for a "
                             "6-author target): the other authors are those rows outside the split")
    parser.add_argument("--work", default=None, help="cache of the variants and the target's answers "
                                                      "(default: <cache>/entity_tuning; one per target)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    overrides = parse_settings(args.set)

    work = Path(args.work) if args.work else default_cache_dir() / "entity_tuning"
    work.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(x) for x in (require_data_dir(args.data_dir) / "tofu" / "retain_perturbed.jsonl").read_text()
            .splitlines() if x.strip()]
    tuning = range((args.split - 1) * SPLIT_ROWS, args.split * SPLIT_ROWS)
    forget = [rows[i] for i in tuning]
    others = [rows[i] for i in range(args.others_rows) if i not in tuning]
    agree_questions = [r["question"] for r in others[::max(1, len(others) // AGREEMENT_QUESTIONS)][:AGREEMENT_QUESTIONS]]

    torch.manual_seed(0)
    target, tok = load_model(args.target)
    ref_path = work / ("target-answers.json" if args.split == 1 else f"target-answers-split{args.split}.json")
    if ref_path.is_file():
        reference = json.loads(ref_path.read_text())
    else:
        reference = generate_answer_ids(target, tok, agree_questions, max_new_tokens=32)
        write_json_atomic(ref_path, reference)

    cell = work / f"variant-{args.variant}{'' if args.split == 1 else f'-split{args.split}'}.json"  # a name per split
    if cell.is_file():
        print(f"[cached] {cell.name}")
        record = json.loads(cell.read_text())
        ran = (record.get("scope", "auto"), _sections_set(record.get("overrides")))
        if ran != (args.scope, _sections_set(overrides)):  # a name is one setting: another under it would read the old cell
            raise SystemExit(f"{cell} holds variant {args.variant!r} run with scope {ran[0]!r} and settings "
                             f"{ran[1]}; name this run another variant")
    else:
        base, recipe = edit_config_for(target.config)  # variants start from the model's recipe
        config = with_settings(base, overrides)
        token_config = token_with_settings(UnlearningTokenConfig(), overrides) if overrides.get("token") else None
        model = copy.deepcopy(target)
        started = time.perf_counter()
        result = unierase.forget([{"question": r["question"]} for r in forget], None, model=model, tokenizer=tok,
                                 edit_config=config, token_config=token_config, scope=args.scope, progress=False)
        wall = time.perf_counter() - started
        last = result.manifest["rounds"][-1]
        token_id = result.manifest["token"]["id"]

        def share(questions):
            firsts = first_token_ids(model, tok, questions)
            return round(sum(f == token_id for f in firsts) / len(firsts), 4)

        agreement = teacher_forced_agreement(model, tok, agree_questions, reference)
        other_ids = generate_answer_ids(model, tok, agree_questions, max_new_tokens=STRAY_TOKENS)
        answers = generate_answer_ids(model, tok, [r["question"] for r in forget], max_new_tokens=40)
        texts = [tok.decode(a, skip_special_tokens=True) for a in answers]
        refusal = config.refusal
        checks, check_texts = {}, {}
        for name, questions in (("forget", [r["question"] for r in forget]),
                                ("paraphrased", [r["paraphrased_question"] for r in forget])):
            ids = generate_answer_ids(model, tok, questions, max_new_tokens=STRAY_TOKENS)
            check_texts[name] = [tok.decode(a, skip_special_tokens=True) for a in ids]
            checks[name] = answer_checks(check_texts[name], refusal=refusal, erased_ids=ids, token_id=token_id)
        own = own_continuation(model, tok, {"forget": [r["question"] for r in forget],
                                            "paraphrased": [r["paraphrased_question"] for r in forget]}, refusal, token_id)
        record = {
            "variant": args.variant, "split": args.split, "scope": args.scope, "recipe": recipe.source if recipe else None,
            "overrides": overrides, "config": config.to_dict(),
            "edit_s": last["timings_s"]["edit"], "wall_s": round(wall, 1),
            "timings_s": {k: v for k, v in last["timings_s"].items() if k.startswith("edit")},
            "passes": [(p["requests"], p["reached"], p["values"]["steps"]) for p in last["passes"]],
            "forget_starts": share([r["question"] for r in forget]),
            "paraphrased_starts": share([r["paraphrased_question"] for r in forget]),
            "other_authors_start": share([r["question"] for r in others]),
            "other_authors_agreement": round(sum(agreement) / len(agreement), 4),
            "other_authors_token_in_answers": answer_checks([], other_ids=other_ids,
                                                            token_id=token_id)["token_in_other_answers"],
            "well_formed_refusals": round(sum(map(is_well_formed_refusal, texts)) / len(texts), 4),
            "answer_checks": checks,
            "chosen_refusal_without_the_config_rule": own,
            "not_the_refusal": {name: [[i, t] for i, t in enumerate(ts) if not is_chosen_refusal(t, refusal)]
                                for name, ts in check_texts.items()},
            "examples": texts[:4],
            "entities": [e["entity"] for e in last["scope"]["entities"]],
            "commit": repo_commit(),
        }
        write_json_atomic(cell, record)
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.is_file() else {
        "setting": {"target": portable(str(Path(args.target).resolve()), default_cache_dir(), "<cache>"),
                    "split": f"retain_perturbed rows {tuning.start}-{tuning.stop - 1} (two authors), questions only",
                    "others": f"retain_perturbed rows 0-{args.others_rows - 1} outside the split",
                    "agreement": f"{AGREEMENT_QUESTIONS} other-author questions, 32-token target answers"},
        "variants": {}}
    results["variants"][args.variant] = record
    write_json_atomic(results_path, results)
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
