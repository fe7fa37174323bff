"""`unierase demo` in bfloat16 beside float32 on this CPU: what moves when the model is loaded in bf16.

Each dtype runs ``python -m unierase.cli demo --dtype D`` in its own process (the same cache: a bf16
model has its own fingerprint, so its own token and statistics) and the summary lines and timing
are recorded side by side. The edit's target values, statistics and solves are fp32/fp64 whatever
the dtype; what moves is the model's own arithmetic (its answers, the keys it forms).

    python benchmarks/dtype_demo.py [--threads 2]

Writes benchmarks/results/dtype_demo.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from rows import repo_commit  # the sibling module

RESULTS = Path(__file__).resolve().parent / "results" / "dtype_demo.json"


def run(dtype: str, threads: int) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "unierase.cli", "demo", "--dtype", dtype], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode != 0:
        raise SystemExit(f"unierase demo --dtype {dtype} failed:\n{done.stderr[-2000:]}")
    lines = done.stdout.splitlines()
    return {"summary": [line for line in lines if line.startswith(("forget questions", "other questions"))],
            "timing": next((line for line in lines if line.startswith("total time")), None),
            "wall_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    from unierase.storage import write_json_atomic

    runs = {dtype: run(dtype, args.threads) for dtype in ("float32", "bfloat16")}
    commit = repo_commit()
    write_json_atomic(Path(args.results), {"description": __doc__.splitlines()[0], "threads": args.threads,
                                           "runs": runs, "commit": commit})
    for dtype, r in runs.items():
        print(dtype, *r["summary"], r["timing"], sep="\n  ")


if __name__ == "__main__":
    main()
