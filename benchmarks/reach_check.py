"""A quick reach check of an edit variant on a TOFU target: the first answer token only.

Erases the 40 forget01 questions (questions only, ``--scope``) from the target and records which
forget questions and paraphrases start with the unlearning token on the erased model, and how
many of the first 80 retain and 40 world-fact questions do (they must not). Minutes instead of
``entity_scope.py``'s quarter hour (no 64-token answers): for comparing variants of the passes
at one target, whose kept variant then gets the full benchmark. Appends one row to ``--results``.

    python benchmarks/reach_check.py --target DIR --variant "what this code does" [--results FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rows import append_row, repo_commit  # the sibling module

RESULTS = Path(__file__).parent / "results" / "edit_variants" / "gemma_tofu_set_aside.json"


def forget01(data_dir=None) -> tuple[list, list[str]]:
    """TOFU forget01's records and their paraphrased questions (``forget01_perturbed``, read once and
    checked by the evaluation's loader, whose errors name the file, row and column)."""
    from unierase.baselines.data import require_data_dir
    from unierase.evaluation.data import load_set, resolve_data
    from unierase.requests import ForgetRequest

    rows = load_set(resolve_data(require_data_dir(data_dir)), "forget", "forget01", paraphrased_question=True).rows
    return ([ForgetRequest(question=r["question"], answer=r["answer"]) for r in rows],
            [r["paraphrased_question"] for r in rows])


def erased_first_tokens(target: str, scope: str, sets: dict[str, list[str]]) -> tuple[dict, dict[str, list[int]], int]:
    """Erase ``sets["forget"]`` (questions only) from ``target`` into a temporary directory; (the
    erased model's manifest, each set's greedy first answer tokens on it, the token's id)."""
    import unierase
    from unierase.generation import first_token_ids
    from unierase.models.loading import load_model

    with tempfile.TemporaryDirectory() as out:
        result = unierase.forget([{"question": q} for q in sets["forget"]], Path(out) / "erased", model=target,
                                 scope=scope, overwrite=True, progress=False)
        model, tok = load_model(str(Path(out) / "erased"))
        firsts = {name: first_token_ids(model, tok, qs) for name, qs in sets.items()}
    return result.manifest, firsts, result.manifest["token"]["id"]


def main() -> None:
    from unierase.baselines.data import load_tofu

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="a TOFU target (unierase finetune's output)")
    parser.add_argument("--variant", required=True, help="what the code under test does differently (the row's name)")
    parser.add_argument("--scope", default="entity", choices=["auto", "fact", "entity"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()

    forget, paraphrased = forget01(args.data_dir)
    sets = {"forget": [r.question for r in forget], "paraphrased": paraphrased,
            "retain": [r.question for r in load_tofu("retain_perturbed", args.data_dir)[:80]],
            "world": [r.question for r in load_tofu("world_facts", args.data_dir)[:40]]}
    manifest, firsts, token_id = erased_first_tokens(args.target, args.scope, sets)
    last = manifest["rounds"][-1]
    row = {"variant": args.variant,
           "code": repo_commit(),
           "edit_s": last["timings_s"]["edit"], "passes": [(p["requests"], p["reached"]) for p in last["passes"]]}
    for name, ids in firsts.items():
        row[f"{name}_starts_with_token"] = sum(i == token_id for i in ids) / len(ids)
        if name in ("forget", "paraphrased"):
            row[f"{name}_missed"] = [j for j, i in enumerate(ids) if i != token_id]
    append_row(args.results, __doc__.split("\n\n")[0], row, target=Path(args.target).name, scope=args.scope)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
