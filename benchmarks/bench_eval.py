"""Benchmark of ``unierase eval``: batched vs one item at a time, side by side, on the real model.

Runs the full evaluation pipeline (scoring of all four TOFU sets, greedy generation, paraphrase
generation) on the first ``--ds-size`` items of every set, once with ``--batch-size`` and once
with batch size 1, each in its own process so that peak memory is measured per mode. Prints wall
time, CPU time, peak memory and the speed-ups, and writes them to
``benchmarks/results/eval_batching.json``. On a shared machine the wall time depends on what else
runs; the process CPU time (one thread) is the steadier measure of the work done.

``--record-full OUT`` instead summarises a finished full evaluation (``unierase eval --out OUT``)
into ``benchmarks/results/eval_forget10_full.json``.

Run it with one thread on a shared machine, e.g.::

    UNIERASE_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/bench_eval.py --threads 1
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

HERE = Path(__file__).resolve().parent


def run_one(args) -> dict:
    import torch

    from unierase.evaluation import evaluate
    from unierase.measure import peak_memory_mb

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        res = evaluate(args.model, Path(tmp) / "out", data=args.data_dir, forget_split=args.forget_split,
                       ds_size=args.ds_size, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                       closer_look=False, plot=False, threads=args.threads)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    s = res.summary
    return {"batch_size": args.batch_size, "wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak_memory_mb(),
            "stages_s": s["timing"]["stages_s"], "model_utility": s["tofu"]["model_utility"],
            "forget_probability": s["tofu"]["sets"]["forget"]["probability"],
            "generations": [r.get("generation") for r in res.per_item["forget"]]}


def compare(args) -> dict:
    results = {}
    for label, bs in (("batched", args.batch_size), ("one_at_a_time", 1)):
        cmd = [sys.executable, __file__, "--child", "--batch-size", str(bs), "--ds-size", str(args.ds_size),
               "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads),
               "--forget-split", args.forget_split]
        if args.model:
            cmd += ["--model", args.model]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        print(f"running {label} (batch size {bs}) ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{label} run failed (exit status {proc.returncode})")
        results[label] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  wall {results[label]['wall_s']:.1f} s, CPU {results[label]['cpu_s']:.1f} s, peak memory {results[label]['peak_rss_mib']:.0f} MiB", flush=True)
    b, s = results["batched"], results["one_at_a_time"]
    same = sum(x == y for x, y in zip(b.pop("generations"), s.pop("generations")))
    out = {
        "what": "unierase eval on the first ds_size items of every TOFU set (scoring + generation + paraphrase generation)",
        "model": args.model or "smollm2-135m-instruct (default)",
        "forget_split": args.forget_split, "ds_size": args.ds_size, "max_new_tokens": args.max_new_tokens,
        "threads": args.threads, "batched": b, "one_at_a_time": s,
        "speedup_wall": s["wall_s"] / b["wall_s"],
        "speedup_cpu": s["cpu_s"] / b["cpu_s"],
        "forget_generations_identical": f"{same}/{args.ds_size}",
        "model_utility_abs_diff": abs((b["model_utility"] or 0) - (s["model_utility"] or 0)),
        "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(f"speed-up of batch size {args.batch_size} over one item at a time: wall {out['speedup_wall']:.2f}x, "
          f"CPU time {out['speedup_cpu']:.2f}x "
          f"(forget generations identical: {out['forget_generations_identical']})")
    return out


def record_full(folder: str) -> dict:
    s = json.loads((Path(folder) / "summary.json").read_text())
    t = s["tofu"]
    progress = {}
    for stage in sorted((Path(folder) / "stages").glob("*.json")):
        rec = json.loads(stage.read_text())
        progress[rec["stage"]] = {"items_done": len(rec["items"]), "complete": rec["complete"],
                                  "wall_s": rec.get("seconds"), "cpu_s": rec.get("cpu_seconds")}
    return {
        "what": "full TOFU evaluation (all items) of the untuned model, unierase eval",
        "model": s["model"], "forget_split": s["forget_split"], "items": s["items"], "complete": s["complete"],
        "wall_s_sum_of_stages": sum(s["timing"]["stages_s"].values()), "stages_s": s["timing"]["stages_s"],
        "cpu_s_sum_of_stages": sum((s["timing"].get("stages_cpu_s") or {}).values()),
        "stages_cpu_s": s["timing"].get("stages_cpu_s"),
        "peak_rss_mib_last_process": s["timing"]["peak_rss_mib"], "threads": s["timing"]["threads"],
        "batch_size": s["scoring"]["batch_size"], "max_new_tokens": s["generation"]["max_new_tokens"],
        "tofu": {"model_utility": t["model_utility"], "forget_quality": t["forget_quality"], "sets": t["sets"]},
        "closer_look": s.get("closer_look"), "extra": s.get("extra"), "notes": s.get("notes"),
        "stage_progress": progress,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--forget-split", default="forget10")
    p.add_argument("--ds-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="greedy answer length (default: the evaluation's own default, 200)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--record-full", default=None, help="summarise a finished full evaluation output directory")
    p.add_argument("--result", default=None, help="where to write the JSON (default: benchmarks/results/eval_*.json)")
    args = p.parse_args()
    if args.max_new_tokens is None:
        from unierase.evaluation.config import EvalConfig

        args.max_new_tokens = EvalConfig().max_new_tokens
    if args.child:
        print(json.dumps(run_one(args)))
        return
    if args.record_full:
        out, default = record_full(args.record_full), HERE / "results" / "eval_forget10_full.json"
    else:
        out, default = compare(args), HERE / "results" / "eval_batching.json"
    target = Path(args.result) if args.result else default
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
