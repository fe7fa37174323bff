"""Per-phase wall time and peak memory of UniErase on SmolLM2-135M-Instruct (CPU).

One-off costs (training the unlearning token, the preserved-key statistics) are measured in a
cold-cache run and reported apart from the edit itself, which is measured for 20 and 100
requests with a warm cache. Each measurement runs in its own process so peak memory is its own.

    python benchmarks/bench_edit.py [--sizes 20 100] [--skip-cold] [--threads 2]

Prints a table and writes benchmarks/results/edit_speed.json.
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

RESULTS = Path(__file__).resolve().parent / "results" / "edit_speed.json"


def child(size: int, cache_dir: str | None, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from unierase.api import forget
    from unierase.measure import peak_memory_mb
    from unierase.edit.corpus import entity_questions
    from unierase.edit_checks import load_demo_facts
    from unierase.models.loading import load_model

    questions = [f["question"] for f in load_demo_facts()]
    questions += [q for q, _ in entity_questions() if q not in questions]
    started = time.perf_counter()
    model, tok = load_model(None, cache_dir=cache_dir)
    load_s = time.perf_counter() - started
    result = forget([{"question": q} for q in questions[:size]], None, model=model, tokenizer=tok, cache_dir=cache_dir,
                    progress=False)
    timings = result.manifest["rounds"][-1]["timings_s"]
    return {"requests": size, "load_s": round(load_s, 2), "timings_s": timings, "peak_memory_mb": round(peak_memory_mb(), 1),
            "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--skip-cold", action="store_true", help="do not measure the one-off token/statistics costs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.cache_dir, args.threads)))
        return

    def run(size: int, cache_dir: str | None) -> dict:
        cmd = [sys.executable, __file__, "--child", str(size), "--threads", str(args.threads)]
        if cache_dir:
            cmd += ["--cache-dir", cache_dir]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    results = {"model": "SmolLM2-135M-Instruct (fp32, CPU)", "machine": f"{os.cpu_count()} cores", "runs": []}

    def record(r: dict) -> None:
        """Print the run and rewrite the JSON, so an interrupted benchmark keeps what it measured."""
        results["runs"].append(r)
        t = r["timings_s"]
        print(f"{r['cache']:<6} {r['requests']:>8} {t.get('token', 0):>8.1f} {t.get('statistics', 0):>8.1f} {t.get('edit', 0):>8.1f} "
              f"{t.get('edit.target_values', 0):>9.1f} {t.get('edit.solve', 0):>8.1f} {r['peak_memory_mb']:>8.0f}", flush=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")

    print(f"{'cache':<6} {'requests':>8} {'token s':>8} {'stats s':>8} {'edit s':>8} {'values s':>9} {'solve s':>8} {'peak MB':>8}",
          flush=True)
    with tempfile.TemporaryDirectory() as cold:
        cache = None  # --skip-cold: the default cache, filled by an earlier run
        if not args.skip_cold:
            from unierase.models.loading import default_model_dir

            models = Path(cold) / "models"
            models.mkdir()
            os.symlink(default_model_dir(), models / "smollm2-135m-instruct")  # reuse the converted weights
            cold_run = run(min(args.sizes), cold)
            cold_run["cache"] = "cold"
            record(cold_run)
            cache = cold  # the warm runs find what the cold run computed
        for size in args.sizes:
            warm = run(size, cache)
            warm["cache"] = "warm"
            record(warm)
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
