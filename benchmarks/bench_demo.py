"""Wall time and peak memory of `unierase demo`: first run on an empty cache, then a cached re-run.

The first run does everything a fresh machine does after `pip install`: convert the embedded
GGUF model, train the unlearning token, compute the key statistics, edit, and print the tables.
The re-run finds all of that in the cache. Targets (issue 2): first run ≤ 10 min, re-run ≤ 3 min
on the 2-core machine. Each run is its own process; its figures come from the process itself.
Samples accumulate in the results file (with the commit and the tree of src/); the medians cover
the samples measured with the newest code, since one run varies by about ±10 % on this machine.

    python benchmarks/bench_demo.py [--threads 2] [--cache DIR] [--cached-only]

Writes benchmarks/results/demo_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "demo_speed.json"

_CHILD = """
import resource, subprocess, sys, time
started = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - started
sys.stdout.write(done.stdout)
sys.stderr.write(done.stderr[-4000:])
print(f"@@ {seconds:.1f} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} {done.returncode}")
"""


def measure(cache: Path, threads: int) -> dict:
    env = dict(os.environ, UNIERASE_CACHE=str(cache), OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-c", _CHILD, sys.executable, "-m", "unierase.cli", "demo"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = out.stdout.strip().splitlines()
    seconds, peak_mb, code = lines[-1].split()[1:]
    if int(code) != 0:
        raise SystemExit(f"unierase demo failed:\n{out.stderr[-2000:]}")
    summary = [line for line in lines if line.startswith(("forget questions", "other questions", "total time"))]
    return {"wall_seconds": float(seconds), "peak_memory_mb": float(peak_mb), "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=None, help="cache directory to start from empty (default: a temporary one)")
    parser.add_argument("--cached-only", action="store_true",
                        help="keep --cache as it is (filled by an earlier run) and measure only the cached re-run")
    args = parser.parse_args()
    if args.cached_only and not (args.cache and Path(args.cache).is_dir()):
        raise SystemExit("--cached-only needs --cache DIR of an earlier run")
    cache = Path(args.cache or tempfile.mkdtemp(prefix="unierase-demo-cache-"))
    if cache.exists() and not args.cached_only:
        shutil.rmtree(cache)
    results = {"model": "SmolLM2-135M-Instruct (fp32, CPU)", "machine": f"{os.cpu_count()} cores", "threads": args.threads,
               "targets_s": {"first": 600, "cached": 180}, "runs": {"first": [], "cached": []}}
    if RESULTS.is_file():  # samples accumulate; the medians cover the samples of the newest code
        old = json.loads(RESULTS.read_text()).get("runs", {})
        for name in results["runs"]:
            previous = old.get(name, [])
            results["runs"][name] = previous if isinstance(previous, list) else [previous]

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()

    code = {"commit": git("rev-parse", "--short", "HEAD"), "src_tree": git("rev-parse", "--short", "HEAD:src")}
    for name in ("cached",) if args.cached_only else ("first", "cached"):
        run = dict(measure(cache, args.threads), **code)
        results["runs"][name].append(run)
        print(f"{name:<7} {run['wall_seconds']:>7.1f} s  peak {run['peak_memory_mb']:>6.0f} MB  "
              f"(target {results['targets_s'][name]} s)", flush=True)
        for line in run["summary"]:
            print("   ", line)
        results["median_s"] = {
            kind: statistics.median(s["wall_seconds"] for s in samples if s.get("src_tree") == code["src_tree"])
            for kind, samples in results["runs"].items() if any(s.get("src_tree") == code["src_tree"] for s in samples)}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {RESULTS}; cache left in {cache}")


if __name__ == "__main__":
    main()
