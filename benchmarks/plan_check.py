"""The plan (``unierase plan``) against what a round measures, and the plans of large models.

Runs one UniErase round of the demo's 24 facts on SmolLM2-135M-Instruct (fp32 and bf16, CPU) from a
cache holding only the converted model, so every phase runs (token, statistics, edit, save), while a
thread samples this process's resident memory; each phase's measured peak (the samples inside its
time span, from the manifest's timings) and the sizes written (checkpoint, sequential state, revert
data, and what the revert formula assumes: the requests the passes solved for, the revert bytes
per edited entry besides the factors) are set beside the plan's figures. Then the plans of the
shipped Llama-3.1-8B, Qwen2.5-7B and Llama-3.1-70B configs (bf16 on a GPU; 40 and 100 requests;
statistics computed and cached).

    python benchmarks/plan_check.py [--threads 2] [--dtypes float32,bfloat16]

Writes benchmarks/results/plan_check.json. The plan counts tensors, not the Python/torch runtime
(~0.4 GiB resident before any model), which the ratio leaves in.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rows import repo_commit  # the sibling module

RESULTS = Path(__file__).resolve().parent / "results" / "plan_check.json"
CONFIGS = Path(__file__).resolve().parent.parent / "tests" / "data" / "configs"
PHASES = ("load", "token", "statistics", "edit", "save")


class Sampler(threading.Thread):
    """This process's resident memory (GiB) every ``every`` seconds, with the time it was taken."""

    def __init__(self, every: float = 0.05):
        super().__init__(daemon=True)
        self.every, self.samples, self.stop = every, [], threading.Event()

    def run(self):
        page = 4096
        while not self.stop.is_set():
            resident = int(Path("/proc/self/statm").read_text().split()[1]) * page
            self.samples.append((time.perf_counter(), resident / 2 ** 30))
            time.sleep(self.every)

    def peak(self, start: float, end: float) -> float | None:
        inside = [gib for t, gib in self.samples if start <= t <= end]
        return round(max(inside), 3) if inside else None


def _size_gib(*paths: Path) -> float:
    return round(sum(p.stat().st_size for path in paths for p in ([path] if path.is_file() else path.rglob("*"))
                     if p.is_file()) / 2 ** 30, 4)


def _revert_detail(out: Path, manifest: dict) -> dict:
    """What the plan's revert formula assumes, as this round did it: requests solved for by all
    passes per request (``plan.PASS_REQUESTS``) and the revert bytes per edited entry besides the
    factors (``plan.FIX_BYTES``), with the updates' size against the weights'."""
    from safetensors.torch import load_file

    round_ = manifest["rounds"][-1]
    solved = sum(p["requests"] for p in round_["passes"])
    data = load_file(str(next((out / "unierase_deltas").glob("*.safetensors"))))
    weights = load_file(str(out / "model.safetensors"))
    beyond, entries, kinds, ratios = 0, 0, {}, []
    for name, info in json.loads((out / "unierase_ledger.jsonl").read_text().splitlines()[-1])["delta"]["tensors"].items():
        kinds[info["kind"]] = kinds.get(info["kind"], 0) + 1
        if info["kind"] != "low_rank":
            continue
        entries += math.prod(info["shape_before"])
        parts = {k.split("::")[1]: t for k, t in data.items() if k.startswith(f"{name}::")}
        beyond += sum(t.numel() * t.element_size() for k, t in parts.items() if k not in ("u", "v"))
        update = parts["u"].double() @ parts["v"].double()
        ratios.append(round(float(update.norm() / weights[name].double().norm()), 4))
    return {"pass_requests": round(solved / len(round_["requests"]), 2), "passes": len(round_["passes"]),
            "bytes_per_entry_besides_factors": round(beyond / entries, 4) if entries else None,
            "update_over_weight_norm": ratios, "delta_kinds": kinds}


def measured_round(threads: int, dtype: str, facts_file: str | None = None) -> dict:
    import torch

    import unierase
    from unierase.edit_checks import load_demo_facts
    from unierase.storage import default_cache_dir

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        (cache / "models").mkdir(parents=True)
        for model in (default_cache_dir() / "models").iterdir():  # the converted model only: every phase runs
            (cache / "models" / model.name).symlink_to(model)
        rows = ([json.loads(line) for line in Path(facts_file).read_text().splitlines() if line.strip()]
                if facts_file else load_demo_facts())
        facts = [{"question": f["question"]} for f in rows if f["role"] == "forget"]
        sampler = Sampler()
        sampler.start()
        started = time.perf_counter()
        result = unierase.forget(facts, Path(tmp) / "out", cache_dir=cache, progress=False, dtype=dtype)
        ended = time.perf_counter()
        sampler.stop.set()
        sampler.join()
        timings = result.manifest["rounds"][-1]["timings_s"]
        spans, at = {}, started
        for name in PHASES[:-1]:
            spans[name] = (at, at + timings.get(name, 0.0))
            at = spans[name][1]
        spans["save"] = (at, ended)
        out = Path(tmp) / "out"
        return {"requests": len(facts), "timings_s": {k: v for k, v in timings.items() if "." not in k},
                "peak_resident_gib": {name: sampler.peak(*span) for name, span in spans.items()},
                "baseline_resident_gib": round(sampler.samples[0][1], 3),
                "written_gib": {"checkpoint": _size_gib(out / "model.safetensors"),
                                "state": _size_gib(out / "unierase_state.safetensors"),
                                "revert_data": _size_gib(out / "unierase_deltas"),
                                "statistics_cache": _size_gib(cache / "stats")},
                "revert": _revert_detail(out, result.manifest),
                "manifest_plan": result.manifest["rounds"][-1].get("plan"),
                "state": result.manifest["rounds"][-1].get("state")}


def large_plans() -> dict:
    """Each shipped config's plan (bf16 on a GPU; 40 and 100 requests; statistics computed or cached),
    and the micro-batch ``forget`` would choose for the edit on a GPU of 40 GB (37.25 GiB; weights included)."""
    from unierase import api
    from unierase.edit.config import EditConfig
    from unierase.edit.plan import Shape, fitting_micro_batch, load_config, plan_round
    from unierase.edit.values import ValueConfig

    plans = {}
    for path in sorted(CONFIGS.glob("*.json")):
        for requests in (40, 100):
            for cached in (False, True):
                plan = api.plan(model=str(path), requests=requests, dtype="bfloat16", device="cuda",
                                statistics_cached=cached)
                plans[f"{path.stem}/{requests}{'/statistics-cached' if cached else ''}"] = plan.to_dict()
            shape = Shape.of(load_config(path))

            def plan_for(size, requests=requests, shape=shape):
                return plan_round(shape, dtype=__import__("torch").bfloat16, device="cuda", requests=requests,
                                  config=EditConfig(values=ValueConfig(micro_batch=size)), statistics_cached=True)
            size = fitting_micro_batch(plan_for, requests, 40e9 / 2 ** 30)
            plans[f"{path.stem}/{requests}/micro-batch-for-a-40GB-gpu"] = {
                "micro_batch": size, "edit_device_gib": next(p.device_gib for p in plan_for(size).phases
                                                             if p.name == "edit")}
            # the sequential record when later rounds keep every soft key (EditConfig.soft_state_rows)
            plans[f"{path.stem}/{requests}/every-soft-key"] = {"state_and_revert_gib": plan_round(
                shape, dtype=__import__("torch").bfloat16, device="cuda", requests=requests,
                config=EditConfig(soft_state_rows=None), statistics_cached=True).state_and_revert_gib}
    return plans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", default="float32,bfloat16", help="the dtypes the round is measured in")
    parser.add_argument("--facts", default=None, help="a JSONL of facts to erase instead of the demo's forget facts "
                        "(e.g. benchmarks/data/heldout_facts.jsonl: the plan's constants were set on the demo's)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--large-only", action="store_true",
                        help="recompute only the large models' plans (no run) in the existing results file")
    args = parser.parse_args()
    from unierase import api
    from unierase.storage import write_json_atomic

    if args.large_only:
        record = json.loads(Path(args.results).read_text())
        record["large"] = large_plans()
        write_json_atomic(Path(args.results), record)
        return
    record = {}
    for dtype in args.dtypes.split(","):
        # each dtype in a fresh process: memory one run freed stays resident and would count in the next
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            measured = pool.submit(measured_round, args.threads, dtype, args.facts).result()
        plan = api.plan(requests=measured["requests"], device="cpu", dtype=dtype).to_dict()
        planned = {p["name"]: p["device_gib"] for p in plan["phases"]}
        ratios = {name: round(gib / planned[name], 2) for name, gib in measured["peak_resident_gib"].items()
                  if gib and planned.get(name)}
        record["smollm2" if dtype == "float32" else f"smollm2_{dtype}"] = {
            "measured": measured, "plan": plan, "measured_over_planned": ratios,
            "written_over_planned": {"state_and_revert": round(
                (measured["written_gib"]["state"] + measured["written_gib"]["revert_data"])
                / plan["state_and_revert_gib"], 2)}}
        print(json.dumps({"dtype": dtype, "measured": measured["peak_resident_gib"], "planned": planned,
                          "ratios": ratios, "written": measured["written_gib"], "revert": measured["revert"],
                          "state_and_revert_planned_gib": plan["state_and_revert_gib"]}, indent=1))
    record.update(large=large_plans(), commit=repo_commit())
    write_json_atomic(Path(args.results), record)


if __name__ == "__main__":
    main()
