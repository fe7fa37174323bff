"""Acceptance figures of UniErase on SmolLM2-135M-Instruct: token universality and one batch edit.

1. Token universality: `[UNL]` forced after held-out questions it was not trained on.
2. Batch edit of the demo's forget facts, given questions only (no subject): share starting with
   `[UNL]`, refusal rate, reworded-question leakage; on the other facts (same shapes: other capitals,
   other authors, symbols…): share starting with `[UNL]`, known facts still correct, teacher-forced
   agreement with the unedited model, exact match of 40-token greedy answers.

    python benchmarks/edit_quality.py [--neighbours 80] [--threads 2]

Writes benchmarks/results/edit_quality.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rows import repo_commit  # the sibling module

RESULTS = Path(__file__).resolve().parent / "results" / "edit_quality.json"


def apply_override(config, item: str) -> None:
    """``FIELD=VALUE`` (VALUE parsed as JSON when it can be, else kept as a string) onto ``config``."""
    field, _, raw = item.partition("=")
    target = config
    if field.startswith("values."):
        target, field = config.values, field[len("values."):]
    if not raw or not hasattr(target, field):
        raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(vars(target))}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    setattr(target, field, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neighbours", type=int, default=80, help="how many non-targeted facts to check")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--key-position", default="auto")
    parser.add_argument("--solver", default=None, help="alphaedit or memit (default: the model's recipe)")
    parser.add_argument("--memit-weight", type=float, default=None)
    parser.add_argument("--threshold", type=float, default=None, help="null-space threshold (alphaedit)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override an EditConfig field (values.FIELD for ValueConfig), e.g. "
                             "--set answer_key_weight=2 --set values.continuation_tokens=8; repeatable")
    parser.add_argument("--result", default=str(RESULTS), help="where to write the JSON")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from unierase.api import forget
    from unierase.demo import pick_neighbours
    from unierase.edit.recipes import edit_config_for
    from unierase.edit_checks import answer_matches, forget_metrics, load_demo_facts, retain_metrics, snapshot
    from unierase.models.loading import load_model
    from unierase.token.check import token_universality
    from unierase.token.questions import heldout_questions

    facts = load_demo_facts()
    forget_rows = [f for f in facts if f["role"] == "forget"]
    others = pick_neighbours(facts, forget_rows, args.neighbours)
    n = len(forget_rows)
    questions = [f["question"] for f in forget_rows] + [f["paraphrase"] for f in forget_rows] + [f["question"] for f in others]
    model, tok = load_model()
    before = snapshot(model, tok, questions, max_new_tokens=40)
    # Phase I alone (the token is trained or loaded from the cache exactly as forget() would)
    from unierase.models.adapters import find_mlp_output
    from unierase.models.loading import model_fingerprint
    from unierase.storage import default_cache_dir
    from unierase.token.cache import ensure_unlearning_token
    from unierase.token.training import UnlearningTokenConfig

    config, recipe = edit_config_for(model.config, key_position=args.key_position)  # the library's settings for this model
    layers = config.resolved_layers(find_mlp_output(model).num_layers)
    info = ensure_unlearning_token(model, tok, fingerprint=model_fingerprint(model), cache_dir=default_cache_dir(),
                                   config=UnlearningTokenConfig(), augment_layers=layers, progress=False)
    universality = token_universality(model, tok, info.token_id, heldout_questions())
    universality["unl_first_token_rate_on_fact_questions"] = sum(
        f == info.token_id for f in snapshot(model, tok, questions, max_new_tokens=1).first_tokens) / len(questions)
    if args.solver:
        config.solver = args.solver
    if args.memit_weight is not None:
        config.memit_weight = args.memit_weight
    if args.threshold is not None:
        config.null_space_threshold = args.threshold
    for item in args.set:
        apply_override(config, item)
    started = time.perf_counter()
    result = forget([{"question": f["question"]} for f in forget_rows], None, model=model, tokenizer=tok,
                    edit_config=config, progress=False)
    edit_seconds = time.perf_counter() - started
    token_id = result.manifest["token"]["id"]
    after = snapshot(model, tok, questions, max_new_tokens=40)


    para = after.slice(n, 2 * n)
    figures = {
        "setting": {"model": "SmolLM2-135M-Instruct fp32 CPU", "forget_facts": n, "other_facts": len(others),
                    "requests": "questions only (no subject)", "key_position": args.key_position,
                    "layers": result.manifest["layers"], "greedy_tokens": 40,
                    "recipe": recipe.name if recipe else None, "threads": args.threads,
                    "hyperparameters": result.manifest["rounds"][-1]["hyperparameters"]},
        "commit": repo_commit(),
        "forget": forget_metrics(after.slice(0, n), token_id),
        "paraphrase": {"starts_with_unl": sum(f == token_id for f in para.first_tokens) / n,
                       "leak": sum(f != token_id and answer_matches(t, r["answer"]) for f, t, r in
                                   zip(para.first_tokens, para.texts, forget_rows)) / n},
        "others": retain_metrics(model, tok, before.slice(2 * n, len(questions)), after.slice(2 * n, len(questions)),
                                 [f["answer"] for f in others], token_id),
        "others_with_unl": [q for q, f in zip(after.slice(2 * n, len(questions)).questions,
                                              after.slice(2 * n, len(questions)).first_tokens) if f == token_id],
        "edit_seconds": round(edit_seconds, 1),
        "timings_s": result.manifest["rounds"][-1]["timings_s"],
        "examples": [{"question": q, "before": b, "after": a} for q, b, a in
                     zip(questions[:n], before.texts[:n], after.texts[:n])][:8],
    }
    figures["token_universality_unedited"] = universality
    # and after the edit the token must still lead into a refusal on the held-out questions
    figures["token_universality_after_edit"] = token_universality(model, tok, token_id, heldout_questions())
    print(json.dumps({k: v for k, v in figures.items() if k not in ("examples",)}, indent=2))
    target = Path(args.result)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
