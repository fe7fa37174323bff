"""The prepared GPU check (issue 31): UniErase at the shape of a large model, on one GPU, offline.

Randomly initialised models built from the shipped configs (``tests/data/configs``; the tiny test
tokenizer: no download, nothing to carry) — the point is time and memory, not erasure quality:

- ``edit/<n>``: ``forget`` of n generic requests on the Llama-3.1-8B shape in bf16 with ``--stats-tokens``
  corpus tokens: each phase's seconds (the manifest), the GPU's peak memory per phase (sampled) and
  the plan's figures beside them;
- ``delta``: the ΔW of one round on a tiny model computed on the GPU against the same round on the
  CPU (largest difference relative to the largest entry; the check asks ≤ 1e-4);
- ``split``: the tiny model split over the GPU and the CPU by a device map edits to the ΔW of the
  unsplit one;
- ``baseline``: one GA+GD step on the Llama-3.2-1B shape in bf16 (seconds, peak memory);
- ``baseline_fsdp``: the same step sharded by FSDP2 (issue 32's engine path, one process on the GPU).

    python benchmarks/gpu_check.py                # one GPU, ≤ 9 minutes
    python benchmarks/gpu_check.py --tiny         # the same steps on tiny models on the CPU (the tests run it)

Writes benchmarks/results/gpu_check.json (``--results`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from rows import repo_commit  # the sibling module

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.json"
CONFIGS = ROOT / "tests" / "data" / "configs"
QUESTIONS = ["Who wrote the novel {}?", "Where was {} born?", "What is {} known for?", "When did {} die?",
             "Which city is home to {}?"]
NAMES = ["Elena Marsh", "Tomas Varga", "Ilse Brandt", "Oren Kade", "Mira Solis", "Jonas Petrov", "Ada Lindqvist",
         "Ravi Menon"]


def _tokenizer():
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import build_tokenizer  # the tests' offline tokenizer (ChatML template)

    return build_tokenizer()


def requests(n: int) -> list[dict]:
    return [{"question": QUESTIONS[i % len(QUESTIONS)].format(NAMES[(i // len(QUESTIONS)) % len(NAMES)] + f" {i}")}
            for i in range(n)]


class Peaks(threading.Thread):
    """The device's allocated memory (GiB) sampled every ``every`` s, to split a run's peak by phase."""

    def __init__(self, device: str, every: float = 0.02):
        super().__init__(daemon=True)
        self.device, self.every, self.samples, self.stop = device, every, [], threading.Event()

    def read(self) -> float:
        if self.device.startswith("cuda"):
            return torch.cuda.memory_allocated() / 2 ** 30
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2 ** 30

    def run(self):
        while not self.stop.is_set():
            self.samples.append((time.perf_counter(), self.read()))
            time.sleep(self.every)

    def by_phase(self, started: float, timings: dict) -> dict:
        out, at = {}, started
        for name in ("load", "token", "statistics", "edit"):
            end = at + timings.get(name, 0.0)
            inside = [g for t, g in self.samples if at <= t <= end]
            out[name] = round(max(inside), 2) if inside else None
            at = end
        return out


def _random_model(config_path: Path | None, device: str, dtype: torch.dtype, vocab: int | None = None):
    from transformers import AutoModelForCausalLM

    from unierase.edit.plan import load_config

    config = load_config(config_path) if config_path else _tiny_config(vocab)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _tiny_config(vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       initializer_range=0.2, tie_word_embeddings=False)


def edit_at_scale(config_path: Path | None, n: int, device: str, dtype: torch.dtype, stats_tokens: int, tok) -> dict:
    import unierase
    from unierase import api

    model = _random_model(config_path, device, dtype, len(tok) + 8)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    peaks = Peaks(device)
    peaks.start()
    started = time.perf_counter()
    result = unierase.forget(requests(n), None, model=model, tokenizer=tok, stats_tokens=stats_tokens, max_passes=2,
                             progress=False)
    wall = time.perf_counter() - started
    peaks.stop.set()
    peaks.join()
    last = result.manifest["rounds"][-1]
    plan = api.plan(model=str(config_path), requests=n, dtype=str(dtype).replace("torch.", ""),
                    device=device) if config_path else None
    out = {"requests": n, "wall_s": round(wall, 1), "timings_s": last["timings_s"],
           "per_request_edit_s": round(last["timings_s"]["edit"] / n, 3),
           "peak_gib_by_phase": peaks.by_phase(started, last["timings_s"]),
           "peak_gib": round((torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0) / 2 ** 30, 2),
           "plan": plan.to_dict() if plan else None, "round_plan": last.get("plan")}
    del model, result
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def _delta(model, tok, device_map=None) -> dict[str, torch.Tensor]:
    """ΔW of one round (3 requests) of ``model``, per edited weight, on the CPU in fp32."""
    import unierase

    before = {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if "down_proj" in n}
    result = unierase.forget(requests(3), None, model=model, tokenizer=tok, stats_tokens=2000, max_passes=1,
                             progress=False, layers=[1, 2])
    after = dict(result.model.named_parameters())
    return {n: after[n].detach().float().cpu() - w for n, w in before.items()}


def _relative_gap(a: dict, b: dict) -> float:
    scale = max(float(v.abs().max()) for v in a.values()) or 1.0
    return max(float((a[n] - b[n]).abs().max()) for n in a) / scale


def delta_against_cpu(device: str, tok) -> dict:
    reference = _delta(_random_model(None, "cpu", torch.float32, len(tok) + 8), tok)
    other = _delta(_random_model(None, device, torch.float32, len(tok) + 8), tok)
    return {"device": device, "relative_gap": _relative_gap(reference, other), "bound": 1e-4}


def split_against_whole(device: str, tok) -> dict:
    """The tiny model with its first two blocks on ``device`` and the rest on the CPU (a device map)."""
    from accelerate import dispatch_model

    reference = _delta(_random_model(None, "cpu", torch.float32, len(tok) + 8), tok)
    model = _random_model(None, "cpu", torch.float32, len(tok) + 8)
    second = device if device != "cpu" else "cpu"
    device_map = {"model.embed_tokens": second, "model.layers.0": second, "model.layers.1": second,
                  "model.layers.2": "cpu", "model.layers.3": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu",
                  "lm_head": "cpu"}
    model = dispatch_model(model, device_map=device_map)
    return {"device_map": device_map, "relative_gap": _relative_gap(reference, _delta(model, tok)), "bound": 1e-4}


def baseline_step(config_path: Path | None, device: str, dtype: torch.dtype, tok) -> dict:
    """One GA+GD optimiser step (forget and retain batches of 4 × 64 tokens) on a random model of
    ``config_path``'s shape."""
    from unierase.baselines.objectives import GA_GD, BaselineConfig

    model = _random_model(config_path, device, dtype, len(tok) + 8)
    model.train()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, len(tok), (4, 64), device=device)
    part = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-5)
    started = time.perf_counter()
    loss, _ = GA_GD(BaselineConfig()).loss(model, {"forget": part, "retain": part})
    loss.backward()
    optimiser.step()
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "loss": round(float(loss.detach()), 4),
            "peak_gib": round((torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0) / 2 ** 30, 2)}


def sharded_baseline_step(config_path: Path | None, device: str, tok, rendezvous: Path) -> dict:
    """The same GA+GD step with the model sharded by FSDP2 (``baselines.sharding``: bf16 compute over
    fp32 master shards) in a one-process group (NCCL on the GPU, gloo with ``--tiny``): the engine's
    path exercised on the device, then gathered back whole as rank 0 does before saving."""
    import torch.distributed as dist

    from unierase.baselines import sharding
    from unierase.baselines.objectives import GA_GD, BaselineConfig
    from unierase.baselines.trainer import held_mb

    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", init_method=f"file://{rendezvous}",
                            rank=0, world_size=1)
    try:
        model = _random_model(config_path, device, torch.bfloat16 if device.startswith("cuda") else torch.float32,
                              len(tok) + 8)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        compute = sharding.shard(model, bf16=True)
        model.train()
        ids = torch.randint(0, len(tok), (4, 64), device=compute)
        part = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-5)
        loss, _ = GA_GD(BaselineConfig()).loss(model, {"forget": part, "retain": part})
        loss.backward()
        optimiser.step()
        seconds = time.perf_counter() - started
        held = held_mb(list(model.parameters()), optimiser)
        plain = sharding.gather(model)
        return {"seconds": round(seconds, 2), "loss": round(float(loss.detach()), 4), "held_mb": held,
                "gathered_dtype": str(next(plain.parameters()).dtype),
                "peak_gib": round((torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0) / 2 ** 30, 2)}
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (what the tests run)")
    parser.add_argument("--stats-tokens", type=int, default=20_000)
    parser.add_argument("--sizes", type=int, nargs="*", default=[8, 40])
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)
    from unierase.storage import write_json_atomic

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    big = None if args.tiny else CONFIGS / "llama-3.1-8b.json"
    small = None if args.tiny else CONFIGS / "llama-3.2-1b.json"
    tok = _tokenizer()
    record = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "tiny": args.tiny,
              "stats_tokens": args.stats_tokens if not args.tiny else 2000}
    for n in args.sizes:
        record[f"edit/{n}"] = edit_at_scale(big, n, device, dtype, record["stats_tokens"], tok)
    record["delta"] = delta_against_cpu(device, tok)
    record["split"] = split_against_whole(device, tok)
    record["baseline"] = baseline_step(small, device, dtype, tok)
    with tempfile.TemporaryDirectory() as tmp:
        record["baseline_fsdp"] = sharded_baseline_step(small, device, tok, Path(tmp) / "rendezvous")
    record["commit"] = repo_commit()
    write_json_atomic(Path(args.results), record)
    print(json.dumps({k: v for k, v in record.items() if not k.startswith("edit/")}, indent=1))
    return record


if __name__ == "__main__":
    main()
