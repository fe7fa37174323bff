"""Key statistics and a baseline epoch in one process and shared among several (torch.distributed, gloo on this CPU).

``stats``: ``unierase stats`` on the default model (SmolLM2-135M-Instruct, its recipe's layers and
corpus size) into a fresh cache directory. ``baseline``: one epoch of GA+GD on TOFU's forget01
(40 questions, 40 retain questions of authors 0–1), batch 4, at the same global batch (one process
``--grad-accum N``, N processes ``--grad-accum 1``). Each once as one process and once as N
processes started by ``torch.distributed.run`` (what ``accelerate launch`` starts), every process
with one thread; the baseline a third time as N processes sharding the model (``--fsdp``, FSDP2),
with the weights, gradients and optimiser moments each process held. Records the wall times and
their ratios. Writes ``benchmarks/results/distributed.json``.

    python benchmarks/bench_distributed.py [--processes 2] [--phases stats baseline]

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

from rows import repo_commit  # the sibling module

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


def timed_baseline(processes: int, total: int, out: Path, data_dir: str, fsdp: bool = False) -> dict:
    """One GA+GD epoch on forget01 at the global batch of ``total`` processes (batch 4 each);
    ``fsdp``: the processes shard the model (FSDP2) instead of each holding a copy (DDP)."""
    from unierase.baselines.data import load_tofu

    requests = out.parent / "forget01.jsonl"
    requests.write_text("".join(json.dumps({"question": r.question, "answer": r.answer}) + "\n"
                                for r in load_tofu("forget01", data_dir)))
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                if processes > 1 else [sys.executable])
    command = launcher + ["-m", "unierase", "-q", "forget", "--method", "ga+gd", "--requests", str(requests),
                          "--retain", "tofu:full[0:40]", "--data-dir", data_dir, "--epochs", "1", "--batch-size", "4",
                          "--grad-accum", str(total // processes), "--lr", "1e-5", "--out", str(out), "--overwrite",
                          "--no-progress", "--force", *(["--fsdp"] if fsdp else [])]
    started = time.perf_counter()
    run = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"the GA+GD epoch with {processes} process(es) failed:\n{run.stderr[-3000:]}")
    manifest = json.loads((out / "unierase_manifest.json").read_text())
    train = manifest.get("timings_s", {}).get("train")
    trained = manifest.get("train") or {}
    return {"processes": processes, "engine": trained.get("engine"), "threads_per_process": 1,
            "wall_s": round(seconds, 1), "train_s": train, "steps": trained.get("steps"),
            "held_mb_per_process": trained.get("held_mb_per_process")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--phases", nargs="+", default=["stats", "baseline"], choices=["stats", "baseline"])
    parser.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    from unierase.storage import default_cache_dir, write_json_atomic

    previous = json.loads(Path(args.results).read_text()) if Path(args.results).is_file() else {}
    baseline = previous.get("baseline")
    if "baseline" in args.phases:
        with tempfile.TemporaryDirectory() as tmp:
            runs = [timed_baseline(n, args.processes, Path(tmp) / f"p{n}{'-fsdp' * fsdp}", args.data_dir, fsdp)
                    for n, fsdp in ((1, False), (args.processes, False), (args.processes, True))]
        one, ddp, fsdp = runs
        baseline = {"runs": runs, "speedup_train": round(one["train_s"] / ddp["train_s"], 2),
                    "speedup_wall": round(one["wall_s"] / ddp["wall_s"], 2),
                    "speedup_train_fsdp": round(one["train_s"] / fsdp["train_s"], 2),
                    "held_share_fsdp": round(fsdp["held_mb_per_process"] / one["held_mb_per_process"], 3)}
        print(f"GA+GD epoch: {one['wall_s']} s in 1 process, {ddp['wall_s']} s in {args.processes} (DDP), "
              f"{fsdp['wall_s']} s in {args.processes} (FSDP2, {fsdp['held_mb_per_process']} MB held per process "
              f"against {one['held_mb_per_process']})")
    if "stats" not in args.phases:
        write_json_atomic(Path(args.results), {**previous, "baseline": baseline})
        return
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
    commit = repo_commit()
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
        "baseline": baseline,
    })


if __name__ == "__main__":
    main()
