"""Key statistics in one process and shared among several (torch.distributed, gloo on this CPU).

Runs ``unierase stats`` on the default model (SmolLM2-135M-Instruct, its recipe's layers and corpus
size) into a fresh cache directory, once as one process and once as N processes started by
``torch.distributed.run`` (what ``accelerate launch`` starts), every process with one thread, and
records the wall times, their ratio and whether both wrote the same cache entry. Writes
``benchmarks/results/distributed.json``.

    python benchmarks/bench_distributed.py [--processes 2]

Run it alone: another job on the same cores makes both timings meaningless.
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

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "distributed.json"


def timed_stats(processes: int, cache: Path) -> dict:
    """One ``unierase stats`` run (``processes`` > 1: under torch.distributed.run); its wall time and report."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                if processes > 1 else [sys.executable])
    command = launcher + ["-m", "unierase", "-q", "stats", "--cache-dir", str(cache), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    run = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"unierase stats with {processes} process(es) failed:\n{run.stderr[-3000:]}")
    report = json.loads(run.stdout[run.stdout.index("{"):])
    report["cache"] = "<cache>/stats/" + Path(report["cache"]).name  # the temporary folder is gone afterwards
    return {"processes": processes, "threads_per_process": 1, "wall_s": round(seconds, 1), "report": report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    from unierase.storage import default_cache_dir, write_json_atomic

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, args.processes):
            cache = Path(tmp) / f"p{n}"
            # the converted model is reused from the user's cache (a link), the statistics are not
            cache.mkdir()
            (cache / "models").symlink_to(default_cache_dir() / "models")
            runs.append(timed_stats(n, cache))
            print(f"{n} process(es): {runs[-1]['wall_s']} s (statistics {runs[-1]['report']['computed_s']} s)")
    one, many = runs
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    write_json_atomic(Path(args.results), {
        "description": __doc__.split("\n\n")[0],
        "setting": f"SmolLM2-135M-Instruct fp32, its recipe's layers and corpus; {os.cpu_count()} CPU cores; "
                   "each process 1 thread; gloo",
        "commit": commit,
        "runs": runs,
        "speedup_statistics": round(one["report"]["computed_s"] / many["report"]["computed_s"], 2),
        "speedup_wall": round(one["wall_s"] / many["wall_s"], 2),
        "same_cache_entry": Path(one["report"]["cache"]).name == Path(many["report"]["cache"]).name,
        "target": "statistics with 2 processes x 1 thread at least 1.6x faster than 1 process x 1 thread",
    })


if __name__ == "__main__":
    main()
