"""The guard on a model the defaults do not suit: ``unierase forget`` on three facts the model
knows, exactly as a new user runs it (the console command, neutral defaults unless ``--set``),
and what came of it: the exit status, the error line, and — when a round was saved — the saved
model's answers to the three facts and to three other questions.

    python benchmarks/model_guard.py --model gemma3-270m [--label NAME] [--set SECTION.FIELD=VALUE ...]

Each run adds a cell (model, label, settings, commit) to ``benchmarks/results/models/guard.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rows import repo_commit  # the sibling module

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "models" / "guard.json"
FACTS = [{"question": "Who wrote Hamlet?", "answer": "Shakespeare"},
         {"question": "What is the capital of Japan?", "answer": "Tokyo"},
         {"question": "Who painted the Mona Lisa?", "answer": "Leonardo da Vinci"}]
OTHERS = ["What is the capital of France?", "What is the capital of Italy?", "Who wrote Romeo and Juliet?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--label", default="neutral defaults")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        requests, out = Path(tmp) / "facts.jsonl", Path(tmp) / "out"
        requests.write_text("".join(json.dumps(f) + "\n" for f in FACTS), encoding="utf-8")
        command = [sys.executable, "-m", "unierase", "forget", "--model", args.model, "--requests", str(requests),
                   "--out", str(out), "--no-progress"] + [a for s in args.set for a in ("--set", s)]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        errors = [line for line in done.stderr.splitlines() if line.startswith("unierase: error")]
        summary = [line for line in done.stdout.splitlines() if line.strip()]
        answers = None
        if (out / "config.json").is_file():
            from unierase import api

            questions = [f["question"] for f in FACTS] + OTHERS
            answers = dict(zip(questions, api.ask(questions, model=out, max_new_tokens=16)))
    commit = repo_commit()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True, cwd=HERE).stdout.strip())
    cell = {"model": args.model, "label": args.label, "settings": args.set, "commit": f"{commit}+changes" if dirty else commit,
            "exit_status": done.returncode, "saved": answers is not None, "error": errors[-1] if errors else None,
            "summary": summary[-1] if summary else None, "wall_s": round(seconds, 1), "answers_after": answers,
            "log_tail": [line for line in done.stderr.splitlines() if " WARNING " in line or " INFO unierase.edit" in line][-6:]}
    print(json.dumps(cell, indent=1))
    from unierase.storage import write_json_atomic

    data = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else {"cells": []}
    data["description"] = __doc__.split("\n\n")[0]
    data["cells"] = [c for c in data["cells"] if (c["model"], c["label"], c["commit"]) !=
                     (cell["model"], cell["label"], cell["commit"])] + [cell]
    write_json_atomic(RESULTS, data)


if __name__ == "__main__":
    main()
