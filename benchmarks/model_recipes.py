"""Any model, measured: one model's held-out figures under the neutral defaults, its calibrated
recipe and (where it has one) its hand recipe.

For a model and a recipe variant, erases the held-out split's forget facts that the unedited model
answers (questions only, one batch) exactly as ``unierase demo`` does (``demo.erase_and_measure``)
and records the per-model table's figures (``calibrate.search.figures``): forget questions that
start with the token, known neighbours kept, teacher-forced agreement, reworded forget questions
and a banned token that bring the fact back, well-formed refusals, the token in other answers,
edit seconds per request.

Splits (neither is ever looked at by ``unierase calibrate``, whose pool shares no question with
them): ``heldout`` — ``benchmarks/data/heldout_facts.jsonl``; ``demo`` — the demo's facts (the
SmolLM2 hand recipe was tuned on them, and the Gemma diagnosis ran on three of them,
``model_guard.py``'s; the held-out split is the clean one).

    python benchmarks/model_recipes.py --model gemma3-270m --variant neutral|calibrated|hand \
        [--recipe PATH] [--split heldout]

A finished cell (model × split × variant × settings × the edit's code) is cached under
``<cache>/model_recipes``; every run rewrites ``benchmarks/results/models/<model>.json`` from the
model's cached cells of the current code.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rows import repo_commit  # the sibling module

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "models"
HELDOUT = HERE / "data" / "heldout_facts.jsonl"
VARIANTS = ("neutral", "calibrated", "hand")


def split_rows(split: str) -> list[dict]:
    from unierase.edit_checks import load_demo_facts

    if split == "demo":
        return load_demo_facts()
    return [json.loads(line) for line in HELDOUT.read_text(encoding="utf-8").splitlines() if line.strip()]


def known_split(model, tokenizer, split: str) -> tuple[list[dict], list[dict], int]:
    """(forget facts the model answers, neighbours it answers, facts in the split)."""
    from unierase.calibrate.pool import known_facts
    from unierase.demo import pick_neighbours

    rows = split_rows(split)
    known = known_facts(model, tokenizer, rows)
    forget = [r for r in known if r["role"] == "forget"]
    return forget, pick_neighbours(known, forget, len(known)), len(rows)


def edit_config_of(variant: str, model, recipe_path: str | None):
    """(EditConfig, where it came from) of a variant: the neutral defaults, a calibrated recipe
    file, or the packaged recipe that matches the model."""
    from unierase.edit.config import EditConfig
    from unierase.edit.recipes import apply_recipe, load_recipes, recipe_for

    if variant == "neutral":
        return EditConfig(), "EditConfig() (neutral defaults)"
    if variant == "calibrated":
        if not recipe_path:
            raise SystemExit("--variant calibrated needs --recipe PATH (the file unierase calibrate wrote)")
        path = Path(recipe_path).expanduser()
        recipe = next(r for r in load_recipes(path.parent) if Path(r.source) == path)
        return apply_recipe(recipe, {}), f"{recipe.name} ({path.name})"
    recipe = recipe_for(model.config, load_recipes())
    if recipe is None:
        raise SystemExit("no packaged recipe matches this model: it has no hand recipe")
    return apply_recipe(recipe, {}), recipe.source


def calibration_trials(recipe_path: str) -> dict:
    """The calibrated recipe's trials on its calibration facts: each stage's change, figures and score,
    and which one was chosen."""
    cal = json.loads(Path(recipe_path).expanduser().read_text())["calibration"]
    return {"forget": cal["forget"], "neighbours": cal["neighbours"], "known": cal["known"], "seconds": cal["seconds"],
            "chosen": cal["chosen"], "trials": [{k: t[k] for k in ("stage", "edit", "figures", "score")}
                                                for t in cal["trials"]]}


def main() -> None:
    import torch

    from unierase import audit, demo, edit_checks, refusals
    from unierase.cache import Cache, code_digest, content_key
    from unierase.calibrate.search import figures
    from unierase.edit import config as config_module, editor, erase, keys, preserved, prompts, scope, solve, values
    from unierase.models.loading import load_model, model_fingerprint
    from unierase.storage import write_json_atomic
    from unierase.token import training

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a --model value (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--name", default=None, help="the results file's name (default: the --model value's last part)")
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--recipe", default=None, help="the calibrated recipe file (--variant calibrated)")
    parser.add_argument("--split", choices=("heldout", "demo"), default="heldout")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    name = args.name or Path(args.model).name

    model, tokenizer = load_model(args.model)
    config, source = edit_config_of(args.variant, model, args.recipe)
    code = code_digest(config_module, editor, erase, keys, preserved, prompts, scope, solve, values, training, audit, demo,
                       edit_checks, refusals)
    cache = Cache()
    fingerprint = model_fingerprint(model)
    key = content_key(fingerprint, args.split, config, code)
    cell = cache.load_json("model_recipes", key)
    if cell is None:
        forget, neighbours, total = known_split(model, tokenizer, args.split)
        started = time.perf_counter()
        measured = demo.erase_and_measure(model, tokenizer, forget, neighbours, edit_config=config)
        commit = repo_commit()
        cell = {"model": args.model, "fingerprint": fingerprint, "split": args.split, "variant": args.variant,
                "recipe": source, "edit_config": config.to_dict(), "code": code, "commit": commit,
                "split_facts": total, "forget_facts": len(forget), "neighbours": len(neighbours),
                "known_neighbours": measured.summary["neighbours"]["known_before"],
                **figures(measured.summary), "timings_s": measured.summary["timings_s"],
                "wall_s": round(time.perf_counter() - started, 1),
                "examples": [{"question": f["question"], "after": measured.after.texts[i]} for i, f in enumerate(forget)][:6],
                # which neighbours moved: what a locality figure short of its bound is made of
                "no_longer_correct": measured.summary["neighbours"]["no_longer_correct"],
                "lowest_agreement": measured.summary["neighbours"]["lowest_agreement"]}
        if args.variant == "calibrated":  # what chose the recipe, on the calibration facts (none of this split's)
            cell["calibration"] = calibration_trials(args.recipe)
        cache.save_json("model_recipes", key, cell)
    print(json.dumps({k: v for k, v in cell.items() if k not in ("edit_config", "examples")}, indent=1))

    cells = [c for c in (json.loads(p.read_text()) for p in sorted((cache.root / "model_recipes").glob("*/data.json")))
             if c.get("code") == code and c.get("fingerprint") == fingerprint]
    write_json_atomic(RESULTS / f"{name}.json", {
        "description": __doc__.split("\n\n")[0],
        "model": args.model,
        "setting": "fp32 CPU (2 cores; cells that ran beside another job say so in notes); one batch, questions "
                   "only; audit attacks at 24 tokens; only the facts the unedited model answers are erased or checked",
        "code": code,
        "cells": sorted(cells, key=lambda c: (c["split"], VARIANTS.index(c["variant"]))),
    })


if __name__ == "__main__":
    main()
