"""Sequential UniErase: five rounds of ten facts, each round a new `unierase forget` process.

After the last round: share of round-1 facts whose answer still starts with `[UNL]`, known facts
(never targeted) still answered correctly, and teacher-forced agreement with the unedited model on
those other questions. Writes benchmarks/results/sequential.json.

    python benchmarks/sequential_edit.py [--rounds 5] [--per-round 10] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rows import repo_commit  # the sibling module

RESULTS = Path(__file__).resolve().parent / "results" / "sequential.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--result", default=str(RESULTS), help="where to write the JSON")
    parser.add_argument("--stats-tokens", type=int, default=None,
                        help="corpus tokens of the preserved-key statistics (default: the model's recipe)")
    parser.add_argument("--facts", default=None,
                        help="a JSONL of facts (question, answer, relation, role) instead of the demo's: e.g. "
                             "benchmarks/data/heldout_facts.jsonl, which no setting was chosen on")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="a setting over the recipe, passed to every round's 'unierase forget --set'; repeatable")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from unierase.demo import pick_neighbours
    from unierase.edit_checks import extend_answers, load_demo_facts, retain_metrics, snapshot
    from unierase.refusals import STRAY_TOKENS, answer_checks
    from unierase.generation import first_token_ids
    from unierase.models.loading import load_model

    facts = ([json.loads(line) for line in Path(args.facts).read_text().splitlines() if line.strip()]
             if args.facts else load_demo_facts())
    # forget set: the demo's forget facts first, then others round-robin over relations
    ordered = [f for f in facts if f["role"] == "forget"] + pick_neighbours(facts, [], len(facts))
    total = args.rounds * args.per_round
    targets, others = ordered[:total], ordered[total:]
    work = Path(args.work or tempfile.mkdtemp(prefix="unierase-seq-"))
    work.mkdir(parents=True, exist_ok=True)
    base, tok = load_model()
    before = snapshot(base, tok, [f["question"] for f in others])
    out = work / "model"
    rounds = []
    for r in range(args.rounds):
        batch = targets[r * args.per_round:(r + 1) * args.per_round]
        path = work / f"round{r + 1}.jsonl"
        path.write_text("".join(json.dumps({"question": f["question"]}) + "\n" for f in batch))
        cmd = [sys.executable, "-m", "unierase.cli", "-q", "forget", "--requests", str(path), "--out", str(out)]
        if r:
            cmd += ["--model", str(out)]
        if args.stats_tokens:
            cmd += ["--stats-tokens", str(args.stats_tokens)]
        for setting in args.set:
            cmd += ["--set", setting]
        started = time.perf_counter()
        subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        rounds.append({"round": r + 1, "facts": len(batch), "seconds": round(time.perf_counter() - started, 1)})
        print(f"round {r + 1}: {len(batch)} facts in {rounds[-1]['seconds']} s", flush=True)

    model, tok = load_model(str(out))
    token_id = tok.convert_tokens_to_ids("<|unlearn|>")
    per_round = []
    for r in range(args.rounds):
        batch = targets[r * args.per_round:(r + 1) * args.per_round]
        firsts = first_token_ids(model, tok, [f["question"] for f in batch])
        per_round.append(sum(f == token_id for f in firsts) / len(batch))
    after = snapshot(model, tok, [f["question"] for f in others])
    figures = {
        "description": "benchmarks/sequential_edit.py" + "".join(f" --set {x}" for x in args.set)
                       + f": {args.rounds} rounds of {args.per_round} {'demo' if not args.facts else Path(args.facts).stem} "
                         "facts, a new process per round",
        "commit": repo_commit(),
        "setting": {"model": "SmolLM2-135M-Instruct fp32 CPU", "facts": args.facts or "demo", "rounds": args.rounds, "facts_per_round": args.per_round,
                    "requests": "questions only", "other_facts": len(others), "process_per_round": True,
                    "settings": args.set},
        "hyperparameters": json.loads((out / "unierase_manifest.json").read_text())["rounds"][-1]["hyperparameters"],
        "rounds": rounds,
        # what the sequential record weighs after the last round: the state later rounds preserve,
        # and every round's revert data
        "state_bytes": (out / "unierase_state.safetensors").stat().st_size
        if (out / "unierase_state.safetensors").is_file() else 0,
        "revert_bytes": sum(f.stat().st_size for f in (out / "unierase_deltas").rglob("*") if f.is_file())
        if (out / "unierase_deltas").is_dir() else 0,
        "starts_with_unl_by_round_after_last": per_round,
        "others": {**retain_metrics(model, tok, before, after, [f["answer"] for f in others], token_id),
                   # the shared check: the token within STRAY_TOKENS tokens of the other answers
                   "token_in_other_answers": answer_checks(
                       [], other_ids=extend_answers(model, tok, after.questions, after.answer_ids, STRAY_TOKENS),
                       token_id=token_id)["token_in_other_answers"]},
    }
    print(json.dumps(figures, indent=2))
    result = Path(args.result)
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
