"""Erase a whole person: UniErase with a scope on the TOFU benchmark target (issue 18's acceptance).

Runs ``unierase.forget`` with the forget01 questions only (no answers, no subjects) on the
benchmark's target (``bench_tofu.py``: authors 0–19 + 198–199) and measures, on the erased model:
the share of the 40 forget questions and of their ``paraphrased_question``s whose greedy answer
starts with the unlearning token, the forget ROUGE-L recall (64-token greedy answers), the share of
retain-author questions (``retain_perturbed``: authors 0–19) that start with the token and their
ROUGE-L against the target's, the share of 100 retain-author and ``--world-facts`` TOFU world-fact
answers holding the token within 64 tokens; the edit's time (token and statistics cached) and peak memory; and
the edit time at ``--timing-sizes`` requests (forget05's first questions); and, in the same run, the
unlearning step of the ``--baselines`` on the same target (forget01 with its answers, the retain
authors' QA as retain data), the edit's time over the fastest of them.

    python benchmarks/entity_scope.py [--scope auto] [--work DIR] [--results FILE]

Finished steps are cached under ``--work`` (default ``<cache>/entity_scope``), keyed on the target and on
UniErase's defaults and edit source; a re-run reuses them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from rows import repo_commit  # the sibling module

RESULTS = Path(__file__).parent / "results" / "entity_scope.json"


def _target_key(model_dir: str) -> str:
    """Which target the steps ran on: its weight files' names, sizes and times (a re-fine-tuned target
    at the same path is a new key)."""
    from unierase.cache import content_key

    files = sorted(Path(model_dir).glob("*.safetensors"))
    return content_key([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files])[:8]


def _cached(path: Path, compute):
    from unierase.storage import write_json_atomic

    if path.is_file():
        print(f"[cached] {path.name}", flush=True)
        return json.loads(path.read_text())
    print(f"[run] {path.name}", flush=True)
    data = compute()
    write_json_atomic(path, data)
    return data


def main() -> None:
    import unierase
    from unierase.baselines.data import load_tofu
    from unierase.evaluation.metrics import rouge_recall
    from unierase.refusals import STRAY_TOKENS, answer_checks, is_well_formed_refusal
    from unierase.storage import default_cache_dir, write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default=str(default_cache_dir() / "bench_tofu" / "models" / "full"),
                        help="the TOFU target (default: the benchmark's, <cache>/bench_tofu/models/full)")
    parser.add_argument("--scope", default="auto", choices=["auto", "fact", "entity"])
    parser.add_argument("--work", default=None, help="cache of this script's steps (default: <cache>/entity_scope)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--retain-rouge", type=int, default=100,
                        help="retain questions whose 64-token answers are scored with ROUGE-L (all 400 get the first-token check)")
    parser.add_argument("--world-facts", type=int, default=40,
                        help="TOFU world-fact questions whose answers must not hold the token (the first N)")
    parser.add_argument("--timing-sizes", type=int, nargs="*", default=[40, 100])
    parser.add_argument("--baselines", nargs="*", default=["ga+gd", "npo+gd"],
                        help="fine-tuning baselines timed on the same target in this run (forget01 with answers and the "
                             "retain authors' QA, in memory): acceptance 2 compares the edit with the fastest")
    parser.add_argument("--baseline-lr", type=float, default=1e-4)
    parser.add_argument("--baseline-epochs", type=float, default=2.0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()

    work = Path(args.work) if args.work else default_cache_dir() / "entity_scope"
    work.mkdir(parents=True, exist_ok=True)
    from reach_check import forget01  # the sibling script's loader

    forget, paraphrases = forget01(args.data_dir)
    world = [r.question for r in load_tofu("world_facts", args.data_dir)[:args.world_facts]]
    retain = load_tofu("retain_perturbed", args.data_dir)
    from bench_tofu import portable, unierase_defaults_key  # the sibling script's helpers

    # every cached step is keyed on what it depends on: the target, and for UniErase's steps its defaults
    target_key = _target_key(args.target)
    tag = f"{args.scope}-{unierase_defaults_key(args.target)}-{target_key}"
    out = work / f"erased-{tag}"
    if (work / f"edit-{tag}.json").is_file() and not out.is_dir():
        (work / f"edit-{tag}.json").unlink()  # the model it made is gone (a later key's run replaced it): edit again

    def pass_detail(last_round: dict) -> list[dict]:
        """Per edit pass: requests, reached, seconds per part, value steps, and the range of −log p(token)
        at the start of its value optimisation over the requests it optimised (where the time goes)."""
        rows = []
        for p in last_round["passes"]:
            start = [x for x in p["values"]["initial_nll"] if x is not None]
            rows.append({"requests": p["requests"], "reached": p["reached"], "timings_s": p["timings_s"],
                         "value_steps": p["values"]["steps"],
                         "initial_nll_range": [min(start), max(start)] if start else None})
        return rows

    def erase():
        for old in work.glob(f"erased-{args.scope}-*"):  # one erased model per scope is kept (each is the model's size)
            if old != out:
                shutil.rmtree(old)
        result = unierase.forget([{"question": r.question} for r in forget], out, model=args.target, scope=args.scope,
                                 overwrite=True, progress=False)
        last = result.manifest["rounds"][-1]
        return {"recipe": last.get("recipe"), "timings_s": last["timings_s"], "peak_memory_mb": last["peak_memory_mb"],
                "not_reached": len(last["not_reached"]), "passes": [(p["requests"], p["reached"]) for p in last["passes"]],
                "scope": last["scope"], "key_tokens": last["key_tokens"],
                "passes_detail": pass_detail(last)}
    edit = _cached(work / f"edit-{tag}.json", erase)

    from unierase.generation import first_token_ids, generate_answer_ids
    from unierase.models.loading import load_model

    def measure(folder: str):
        def compute():
            model, tok = load_model(folder)
            manifest = Path(folder) / "unierase_manifest.json"
            token = json.loads(manifest.read_text()).get("token") if manifest.is_file() else None
            token_id = token["id"] if token else None  # the target has no unlearning token
            firsts = {name: first_token_ids(model, tok, qs) for name, qs in
                      (("forget", [r.question for r in forget]), ("paraphrased", paraphrases),
                       ("retain", [r.question for r in retain]))}
            texts, answer_ids = {}, {}
            for name, qs in (("forget", [r.question for r in forget]), ("paraphrased", paraphrases),
                             ("retain", [r.question for r in retain[:args.retain_rouge]]), ("world", world)):
                answer_ids[name] = generate_answer_ids(model, tok, qs, max_new_tokens=args.max_new_tokens)
                texts[name] = [tok.decode(a, skip_special_tokens=True) for a in answer_ids[name]]
            starts = {name: (sum(f == token_id for f in ids) / len(ids) if token_id is not None else 0.0)
                      for name, ids in firsts.items()}
            refusal = json.loads(manifest.read_text())["rounds"][-1]["hyperparameters"].get("refusal") if token else None
            checks = {name: answer_checks(texts[name], refusal=refusal, erased_ids=answer_ids[name],
                                          other_ids=answer_ids["retain"], token_id=token_id)
                      for name in ("forget", "paraphrased")}
            # the answers that must not hold the token: retain authors and world facts, each counted apart
            strays = {name: answer_checks([], other_ids=answer_ids[name], token_id=token_id)["token_in_other_answers"]
                      for name in ("retain", "world")}
            return {"starts_with_token": starts, "texts": texts, "answer_checks": checks, "token_in_answers": strays}
        return compute

    texts_key = f"{args.max_new_tokens}x{args.retain_rouge}x{args.world_facts}-checks"
    target_m = _cached(work / f"measure-target-{target_key}-{texts_key}.json", measure(args.target))
    erased_m = _cached(work / f"measure-{tag}-{texts_key}.json", measure(str(out)))
    forget_rouge = rouge_recall(erased_m["texts"]["forget"], [r.answer for r in forget]).value
    retain_ref = [r.answer for r in retain[:args.retain_rouge]]
    retain_rouge = rouge_recall(erased_m["texts"]["retain"], retain_ref).value
    retain_rouge_target = rouge_recall(target_m["texts"]["retain"], retain_ref).value

    timing = {}
    forget05 = load_tofu("forget05", args.data_dir)
    for n in args.timing_sizes:
        def timed(n=n):
            started = time.perf_counter()
            result = unierase.forget([{"question": r.question} for r in forget05[:n]], work / f"timing-{n}",
                                     model=args.target, scope=args.scope, overwrite=True, progress=False)
            t = result.manifest["rounds"][-1]["timings_s"]
            return {"requests": n, "edit_s": t["edit"], "per_request_s": round(t["edit"] / n, 2),
                    "target_values_s": t.get("edit.target_values"), "solve_s": t.get("edit.solve"),
                    "wall_s": round(time.perf_counter() - started, 1),
                    "not_reached": len(result.manifest["rounds"][-1]["not_reached"])}
        timing[n] = _cached(work / f"timing-{tag}-{n}.json", timed)

    baselines = {}
    for method in args.baselines:  # the unlearning step only (train_s), as the benchmark times it
        def train(method=method):
            result = unierase.forget([r.to_dict() for r in forget], None, model=args.target, method=method,
                                     retain=retain, lr=args.baseline_lr, epochs=args.baseline_epochs, progress=False)
            m = result.manifest
            return {"train_s": m["timings_s"]["train"], "peak_memory_mb": m["peak_memory_mb"],
                    "lr": args.baseline_lr, "epochs": args.baseline_epochs, "steps": m["train"]["steps"]}
        baselines[method] = _cached(work / f"baseline-{method}-{args.baseline_lr:g}x{args.baseline_epochs:g}-{target_key}.json",
                                    train)
    fastest = min(baselines, key=lambda m: baselines[m]["train_s"]) if baselines else None

    figures = {
        "setting": {"target": portable(str(Path(args.target).resolve()), default_cache_dir(), "<cache>"),
                    "scope": args.scope, "requests": "forget01 questions only (40)",
                    "max_new_tokens": args.max_new_tokens, "retain_rouge_questions": args.retain_rouge,
                    "retain_first_token_questions": len(retain)},
        "edit": edit,
        "forget_starts_with_token": erased_m["starts_with_token"]["forget"],
        "paraphrased_starts_with_token": erased_m["starts_with_token"]["paraphrased"],
        "retain_starts_with_token": erased_m["starts_with_token"]["retain"],
        "forget_rougeL": round(forget_rouge, 4),
        "well_formed_refusals": round(sum(map(is_well_formed_refusal, erased_m["texts"]["forget"]))
                                      / len(erased_m["texts"]["forget"]), 4),
        "answer_checks": erased_m.get("answer_checks"),
        "token_in_answers": {**erased_m.get("token_in_answers", {}), "window": STRAY_TOKENS,
                             "questions": {"retain": args.retain_rouge, "world": len(world)}},
        "retain_rougeL": round(retain_rouge, 4),
        "retain_rougeL_target": round(retain_rouge_target, 4),
        "retain_rougeL_ratio": round(retain_rouge / retain_rouge_target, 4) if retain_rouge_target else None,
        "timing": timing,
        "baselines": baselines,
        "edit_over_fastest_baseline": (round(edit["timings_s"]["edit"] / baselines[fastest]["train_s"], 3)
                                       if fastest else None),
        "examples": {"forget": erased_m["texts"]["forget"][:6], "retain": erased_m["texts"]["retain"][:3]},
        "commit": repo_commit(),
    }
    figures["acceptance"] = {
        "forget_starts_ge_0.95": figures["forget_starts_with_token"] >= 0.95,
        "paraphrased_starts_ge_0.90": figures["paraphrased_starts_with_token"] >= 0.90,
        "forget_rougeL_le_0.15": figures["forget_rougeL"] <= 0.15,
        "retain_starts_le_0.02": figures["retain_starts_with_token"] <= 0.02,
        "retain_rougeL_ge_0.95_target": (figures["retain_rougeL_ratio"] or 0) >= 0.95,
        "edit_le_fifth_of_fastest_baseline": (None if fastest is None
                                              else figures["edit_over_fastest_baseline"] <= 0.2),
    }
    write_json_atomic(Path(args.results), figures)
    print(json.dumps({k: v for k, v in figures.items() if k not in ("examples",)}, indent=1))


if __name__ == "__main__":
    main()
