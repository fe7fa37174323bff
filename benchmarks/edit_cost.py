"""The edit's time at two commits in one run: today's code against a reference commit (issue 30's bound).

For each commit a temporary git worktree is made and each measurement runs in a fresh process
with that worktree's ``src`` first on the path, so both commits run on the same machine, with the
same threads, in the same session. Two edits are timed, each questions only and in one batch:
the demo's 24 forget facts on SmolLM2-135M-Instruct, and forget05's first 40 questions on the
TOFU benchmark's target (``bench_tofu.py``; scope auto). The edit phase is what counts: the token
and the key statistics are cached (a first run of a commit trains and measures them, untimed).
Runs alternate between the commits (``--repeats`` rounds), and the median of each is reported.

    python benchmarks/edit_cost.py --reference ae2361d [--commit HEAD] [--repeats 2] [--threads 2]

Writes ``benchmarks/results/edit_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "edit_cost.json"
CASES = ("demo", "tofu40")


def child(case: str, threads: int, out: str) -> dict:
    """One edit with whatever ``unierase`` is first on the path; its round's timings."""
    import torch

    torch.set_num_threads(threads)
    import unierase
    from unierase.storage import default_cache_dir

    if case == "demo":
        from unierase.edit_checks import load_demo_facts
        from unierase.models.loading import load_model

        model, tokenizer = load_model()
        questions = [f["question"] for f in load_demo_facts() if f["role"] == "forget"]
        result = unierase.forget([{"question": q} for q in questions], None, model=model, tokenizer=tokenizer,
                                 progress=False)
    else:
        from unierase.baselines.data import load_tofu

        target = default_cache_dir() / "bench_tofu" / "models" / "full"
        questions = [r.question for r in load_tofu("forget05")][:40]
        result = unierase.forget([{"question": q} for q in questions], out, model=str(target), scope="auto",
                                 overwrite=True, progress=False)
    last = result.manifest["rounds"][-1]
    return {"requests": len(questions), "timings_s": last["timings_s"],
            "passes": [[p["requests"], p["reached"]] for p in last.get("passes", [])],
            "not_reached": len(last.get("not_reached", []))}


def run_case(tree: Path, case: str, threads: int, data_dir: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), UNIERASE_DATA=str(data_dir))
    with tempfile.TemporaryDirectory() as out:
        code = (f"import json, sys; sys.path.insert(0, {str(HERE)!r}); from edit_cost import child; "
                f"print('RESULT ' + json.dumps(child({case!r}, {threads}, {str(Path(out) / 'erased')!r})))")
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tree)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{case} at {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="the commit whose edit time is the bound's unit")
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES)
    parser.add_argument("--data-dir", default=None, help="the folder holding tofu/ (default: found as the CLI does)")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()

    from unierase.baselines.data import require_data_dir
    from unierase.storage import write_json_atomic

    data_dir = require_data_dir(args.data_dir)  # found from here: the worktrees sit elsewhere

    def rev(name: str) -> str:
        return subprocess.run(["git", "rev-parse", "--short", name], capture_output=True, text=True, cwd=HERE,
                              check=True).stdout.strip()

    commits = {"reference": rev(args.reference), "commit": rev(args.commit)}
    runs: dict[str, dict[str, list[dict]]] = {case: {role: [] for role in commits} for case in args.cases}
    with tempfile.TemporaryDirectory() as scratch:
        trees = {}
        for role, commit in commits.items():
            trees[role] = Path(scratch) / role
            subprocess.run(["git", "worktree", "add", "--detach", "-f", str(trees[role]), commit], cwd=HERE, check=True,
                           capture_output=True)
        try:
            for case in args.cases:
                for role in commits:  # a first, untimed run trains and caches what the edit reads
                    run_case(trees[role], case, args.threads, data_dir)
                for repeat in range(args.repeats):
                    for role in (commits if repeat % 2 == 0 else reversed(list(commits))):
                        runs[case][role].append(run_case(trees[role], case, args.threads, data_dir))
                        edit = runs[case][role][-1]["timings_s"]["edit"]
                        print(f"{case} {role} ({commits[role]}): edit {edit:.1f} s", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=HERE, capture_output=True)

    summary = {}
    for case, by_role in runs.items():
        medians = {role: statistics.median(r["timings_s"]["edit"] for r in rs) for role, rs in by_role.items()}
        summary[case] = {"edit_s": {role: round(m, 2) for role, m in medians.items()},
                         "ratio": round(medians["commit"] / medians["reference"], 3)}
        print(f"{case}: {medians['commit']:.1f} s against {medians['reference']:.1f} s = "
              f"{summary[case]['ratio']:.2f}x", flush=True)
    write_json_atomic(Path(args.results), {
        "description": __doc__.split("\n\n")[0],
        "setting": {"threads": args.threads, "repeats": args.repeats, "machine": "this CPU, nothing else running",
                    "cases": {"demo": "the demo's 24 forget questions, SmolLM2-135M-Instruct, one batch",
                              "tofu40": "forget05's first 40 questions on <cache>/bench_tofu/models/full, scope auto"}},
        "commits": commits,
        "summary": summary,
        "runs": runs,
    })


if __name__ == "__main__":
    main()
