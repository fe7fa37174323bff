"""Is the default CPU fp32 path unchanged? ``unierase demo`` at an earlier commit and at the working tree.

Checks out ``--before`` into a temporary git worktree, runs ``python -m unierase.cli demo`` with that
tree's ``src`` first on the path, then with this tree's, one after the other on the same cache
(tokens, statistics and answers are keyed by the code that made them), and compares their output
line by line, leaving out the timing line.

    python benchmarks/cpu_path_check.py --before COMMIT [--threads 1]

Writes benchmarks/results/cpu_path_unchanged.json.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "cpu_path_unchanged.json"


def demo_output(tree: Path, threads: int) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "unierase.cli", "demo"], cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"unierase demo failed in {tree}:\n{done.stderr[-2000:]}")
    return done.stdout


def _commit(tree: Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the commit to compare with")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    from unierase.storage import write_json_atomic

    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "-f", str(old), args.before], cwd=ROOT, check=True, capture_output=True)
        try:
            outputs = {"before": demo_output(old, args.threads), "after": demo_output(ROOT, args.threads)}
            commits = {"before": _commit(old), "after": _commit(ROOT)}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
    tables = {k: "\n".join(line for line in v.splitlines() if not line.startswith("total time")) for k, v in outputs.items()}
    write_json_atomic(Path(args.results), {
        "description": "Is the default CPU fp32 path unchanged: `unierase demo` at two commits, every line but the timing",
        "before_commit": commits["before"], "after_commit": commits["after"],
        "how": f"python benchmarks/cpu_path_check.py --before {args.before} --threads {args.threads}",
        "tables_identical": tables["before"] == tables["after"],
        "stdout_sha256_without_timing": {k: hashlib.sha256(v.encode()).hexdigest()[:16] for k, v in tables.items()},
        "summary_lines": [line for line in outputs["after"].splitlines()
                          if line.startswith(("forget questions", "other questions"))],
        "timing_lines": {k: next((line for line in v.splitlines() if line.startswith("total time")), None)
                         for k, v in outputs.items()},
    })
    print("identical" if tables["before"] == tables["after"] else "DIFFERENT")


if __name__ == "__main__":
    main()
