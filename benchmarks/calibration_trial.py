"""How ``unierase calibrate`` would score a given recipe: one trial on the model's calibration facts.

Runs the trial ``calibrate`` runs for each candidate (the same known facts, the same 24-erased
split, the same figures and score, cached alike) with the edit settings of ``--recipe`` (a recipe
file: a packaged one such as SmolLM2's hand recipe, or a calibrated one), and appends the figures
with whether they meet calibrate's bounds to ``--results``. A hand recipe scored this way shows
whether calibrate's rules could choose it from its own pool. Never looks at held-out facts.

    python benchmarks/calibration_trial.py [--model M] --recipe FILE [--results FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rows import append_row, repo_commit  # the sibling module

RESULTS = Path(__file__).parent / "results" / "edit_variants" / "calibration_trials_of_recipes.json"


def main() -> None:
    from unierase.calibrate.run import score_edit
    from unierase.calibrate.search import bounds_met
    from unierase.record.rounds import load_checked_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a --model value (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--recipe", required=True, help="a recipe file whose 'edit' settings the trial runs")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()

    model, tokenizer = load_checked_model(args.model)
    recipe = json.loads(Path(args.recipe).read_text())
    trial = score_edit(model, tokenizer, recipe["edit"])
    erases, keeps = bounds_met(trial["figures"])
    row = {"model": args.model or "smollm2-135m-instruct", "recipe": recipe.get("name"), "edit": recipe["edit"],
           "forget": trial["forget"], "neighbours": trial["neighbours"], "figures": trial["figures"],
           "score": trial["score"], "erases": erases, "keeps_locality": keeps, "commit": repo_commit()}
    append_row(args.results, __doc__.split("\n\n")[0], row)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
