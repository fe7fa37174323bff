"""Does the erasure hold? Edit settings measured against rewordings, a banned token and clean refusals.

For a split and an edit variant (the model's recipe with ``--set`` overrides), erases the split's
forget facts from SmolLM2-135M-Instruct (questions only, one batch) exactly as ``unierase demo``
does (``demo.erase_and_measure``) and records: the share of reworded forget questions whose answer
still holds the fact, the share of forget facts that come back with the unlearning token banned at
decode (24 tokens), the share of forget answers that are a well-formed refusal, the share of known
neighbour facts still answered correctly and the teacher-forced agreement on the neighbours' answers.

Splits: ``tuning`` — the demo's 24 facts and 50 neighbours (what settings are chosen on);
``heldout`` — ``benchmarks/data/heldout_facts.jsonl``, 16 facts and 21 neighbours written for this
check, kept where the unedited model answers them, none naming an entity of the edit's substitute
pools (``edit.corpus.SUBSTITUTE_GROUPS``) or of the demo; never used to choose a setting.

    python benchmarks/erasure_holds.py --split tuning --variant NAME [--set values.banned_weight=1] ...

A finished cell (split × variant × settings × the edit's code) is cached under
``<cache>/erasure_holds``; every run rewrites ``benchmarks/results/erasure_holds.json`` from all
cached cells of the current code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rows import repo_commit  # the sibling module


HERE = Path(__file__).parent
RESULTS = HERE / "results" / "erasure_holds.json"
HELDOUT = HERE / "data" / "heldout_facts.jsonl"
TARGETS = {"rewordings": ("max", 0.30), "token_ban": ("max", 0.15), "well_formed_refusals": ("min", 0.90),
           "known_still_correct": ("min", 0.90), "teacher_forced_agreement": ("min", 0.95)}
"""Issue 16's targets, batch (≤ for leaks, ≥ for what must be kept)."""


def split_facts(split: str) -> tuple[list[dict], list[dict]]:
    from unierase.demo import DEMO_NEIGHBOURS, pick_neighbours
    from unierase.edit_checks import load_demo_facts

    if split == "tuning":
        facts = load_demo_facts()
        forget = [f for f in facts if f["role"] == "forget"]
        return forget, pick_neighbours(facts, forget, DEMO_NEIGHBOURS)
    facts = [json.loads(line) for line in HELDOUT.read_text(encoding="utf-8").splitlines() if line.strip()]
    forget = [f for f in facts if f["role"] == "forget"]
    return forget, pick_neighbours(facts, forget, len(facts))


def figures(summary: dict) -> dict:
    audit, neighbours = summary["audit"], summary["neighbours"]
    return {"forget_starts_with_unl": summary["forget"]["starts_with_unl"], "rewordings": audit["rewordings"],
            "token_ban": audit["token_ban"], "well_formed_refusals": audit["well_formed_refusals"],
            "chosen_refusal": audit.get("chosen_refusal"),
            "known_still_correct": neighbours["known_still_correct"],
            "neighbours_unl_anywhere": summary["answers"]["token_in_other_answers"],
            "erased_token_repeated": summary["answers"]["token_repeated"],
            "teacher_forced_agreement": neighbours["teacher_forced_agreement"],
            "edit_s": summary["timings_s"].get("edit")}


def choose(cells: list[dict]) -> str | None:
    """The tuning split's best variant: the most targets met, then the fewest facts back."""
    tuning = [c for c in cells if c["split"] == "tuning"]
    if not tuning:
        return None
    return min(tuning, key=lambda c: (-sum(meets(c).values()), c["rewordings"] + c["token_ban"], c["variant"]))["variant"]


def meets(row: dict) -> dict:
    return {name: (row[name] <= bound if kind == "max" else row[name] >= bound) for name, (kind, bound) in TARGETS.items()}


def main() -> None:
    import torch

    from unierase.cache import Cache, code_digest, content_key
    from unierase.demo import erase_and_measure
    from unierase.models.loading import load_model
    from unierase.storage import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("tuning", "heldout"), required=True)
    parser.add_argument("--variant", required=True, help="a name for these settings (recorded with them)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a setting (edit, values, entity_values or token; value as JSON); repeatable")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from unierase import audit, demo, edit_checks, refusals
    from unierase.edit import config as edit_config, editor, erase, keys, options, preserved, prompts, scope, solve, values
    from unierase.token import questions, training

    from unierase.edit.recipes import parse_settings

    overrides = parse_settings(args.set)
    # the edit's and the measurement's code: a change to either is a new cell
    code = code_digest(edit_config, editor, erase, keys, options, preserved, prompts, scope, solve, values, questions, training,
                       audit, demo, edit_checks, refusals)
    cache = Cache()
    key = content_key(args.split, overrides, code)
    cell = cache.load_json("erasure_holds", key)
    if cell is None:
        model, tokenizer = load_model()
        forget, neighbours = split_facts(args.split)
        measured = erase_and_measure(model, tokenizer, forget, neighbours, settings=overrides)
        commit = repo_commit()
        cell = {"split": args.split, "variant": args.variant, "overrides": overrides, "code": code, "commit": commit,
                "forget_facts": len(forget), "neighbours": len(neighbours), **figures(measured.summary),
                "examples": [{"question": f["question"], "after": measured.after.texts[i],
                              "token_ban": item["attacks"]["token_ban"]["example"],
                              "reworded": item["attacks"]["rewordings"]["example"]}
                             for i, (f, item) in enumerate(zip(forget, measured.audit.items))][:8],
                # neighbour answers that take up the token later on (special tokens shown), read to the
                # length the share above counts
                "neighbours_holding_token": [
                    {"question": f["question"], "after": tokenizer.decode(ids)}
                    for f, ids in zip(neighbours, measured.other_answer_ids)
                    if measured.token_id in ids][:8]}
        cache.save_json("erasure_holds", key, cell)
    print(json.dumps(cell, indent=1))

    # the results file: every cached cell of this code
    cells = [c for c in (json.loads(p.read_text()) for p in sorted((cache.root / "erasure_holds").glob("*/data.json")))
             if c.get("code") == code]
    for c in cells:
        c["meets"] = meets(c)
    write_json_atomic(Path(args.results), {
        "description": __doc__.split("\n\n")[0],
        "setting": "SmolLM2-135M-Instruct fp32 CPU; one batch, questions only; the model's recipe "
                   "(src/unierase/edit/recipes/smollm2-135m.json) with each cell's overrides; audit attacks at 24 tokens",
        "targets": {k: {"bound": b, "kind": "at most" if kind == "max" else "at least"} for k, (kind, b) in TARGETS.items()},
        "code": code,
        "chosen": {"rule": "on the tuning split: the most targets met, then the fewest facts back (rewordings + "
                           "token ban); reported on the held-out split", "variant": choose(cells)},
        "cells": sorted(cells, key=lambda c: (c["split"] != "tuning", c["variant"])),
        "plot": Path(args.results).with_suffix(".png").name,
    })
    plot(cells, Path(args.results).with_suffix(".png"))


def plot(cells: list[dict], path: Path) -> None:
    """The trade-off: facts that come back (mean of rewordings and token ban) against neighbours kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for split, marker in (("tuning", "o"), ("heldout", "s")):
        chosen = [c for c in cells if c["split"] == split]
        ax.scatter([c["known_still_correct"] for c in chosen], [(c["rewordings"] + c["token_ban"]) / 2 for c in chosen],
                   marker=marker, label=f"{split} split")
        for c in chosen:
            ax.annotate(c["variant"], (c["known_still_correct"], (c["rewordings"] + c["token_ban"]) / 2), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.axvline(TARGETS["known_still_correct"][1], color="grey", lw=0.8, ls="--")
    ax.axhline((TARGETS["rewordings"][1] + TARGETS["token_ban"][1]) / 2, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("known neighbour facts still correct")
    ax.set_ylabel("facts back (mean of rewordings and token ban)")
    ax.set_title("Erasure depth vs locality (targets dashed: bottom right is good)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
