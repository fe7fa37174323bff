"""Prove, check, undo on the real model: five sequential UniErase rounds, then history, verify, a
hand-altered copy, and revert --undo-from 3 compared byte for byte with a copy saved after round 2.

Each round is its own `unierase forget` process continuing the saved state (the demo's forget
facts, questions with their answer keywords). Writes benchmarks/results/ledger_audit.json.

    python benchmarks/ledger_audit.py [--rounds 5] [--per-round 4] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rows import repo_commit  # the sibling module

RESULTS = Path(__file__).resolve().parent / "results" / "ledger_audit.json"


def _cli(*args, env, check=True) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "unierase.cli", "-q", *map(str, args)], env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"unierase {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc, round(time.perf_counter() - started, 1)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=4)
    parser.add_argument("--revert-to", type=int, default=3)
    parser.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--result", default=str(RESULTS))
    args = parser.parse_args()
    if not 2 <= args.revert_to <= args.rounds:
        raise SystemExit("--revert-to must be between 2 and --rounds")

    from unierase.edit_checks import load_demo_facts

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    facts = [f for f in load_demo_facts() if f["role"] == "forget"][: args.rounds * args.per_round]
    work = Path(args.work or tempfile.mkdtemp(prefix="unierase-ledger-"))
    work.mkdir(parents=True, exist_ok=True)
    out = work / "model"
    rounds = []
    for r in range(args.rounds):
        batch = facts[r * args.per_round:(r + 1) * args.per_round]
        path = work / f"round{r + 1}.jsonl"
        path.write_text("".join(json.dumps({"question": f["question"], "answer": f["answer"]}) + "\n" for f in batch))
        _, seconds = _cli("forget", "--requests", path, "--out", out, *(["--model", out] if r else []), env=env)
        rounds.append({"round": r + 1, "requests": len(batch), "seconds": seconds})
        print(f"round {r + 1}: {len(batch)} requests in {seconds} s", flush=True)
        if r + 1 == args.revert_to - 1:
            shutil.copytree(out, work / f"after_round{r + 1}", dirs_exist_ok=True)

    proc, t_history = _cli("history", out, "--json", env=env)
    history = json.loads(proc.stdout)
    proc, t_verify = _cli("verify", out, "--json", work / "verify.json", env=env, check=False)
    verify = json.loads((work / "verify.json").read_text())
    print(proc.stdout, flush=True)

    # a copy whose weights were changed by hand (one edited projection of the last layer edited)
    altered = work / "altered"
    shutil.copytree(out, altered, dirs_exist_ok=True)
    code = (
        "import sys, torch\n"
        "from unierase.models.loading import load_model\n"
        "m, _ = load_model(sys.argv[1])\n"
        "layer = int(sys.argv[2])\n"
        "w = m.model.layers[layer].mlp.down_proj.weight\n"
        "with torch.no_grad(): w[0, :8] += 1e-3\n"
        "m.save_pretrained(sys.argv[1])\n")
    layers = json.loads((out / "unierase_manifest.json").read_text())["layers"]
    subprocess.run([sys.executable, "-c", code, str(altered), str(layers[-1])], check=True, env=env, capture_output=True)
    proc_alt, _ = _cli("verify", altered, "--json", work / "verify_altered.json", env=env, check=False)
    verify_altered = json.loads((work / "verify_altered.json").read_text())

    reverted = work / f"reverted_to_{args.revert_to}"
    _, t_revert = _cli("revert", out, "--undo-from", args.revert_to, "--out", reverted, "--overwrite", env=env)
    reference = work / f"after_round{args.revert_to - 1}"
    identical = {name: (reverted / name).read_bytes() == (reference / name).read_bytes()
                 for name in ("model.safetensors", "unierase_state.safetensors", "tokenizer.json", "config.json")}
    proc_rv, _ = _cli("verify", reverted, "--json", work / "verify_reverted.json", env=env, check=False)
    verify_reverted = json.loads((work / "verify_reverted.json").read_text())

    entries = [json.loads(line) for line in (out / "unierase_ledger.jsonl").read_text().splitlines()]
    edited = {name: info for e in entries for name, info in e["delta"]["tensors"].items() if "down_proj" in name}
    figures = {
        "setting": {"model": "SmolLM2-135M-Instruct fp32 CPU", "rounds": args.rounds, "requests_per_round": args.per_round,
                    "requests": "demo forget facts, question + answer keyword", "process_per_round": True,
                    "threads": args.threads, "revert_to": args.revert_to},
        "rounds": rounds,
        "history": [{k: r[k] for k in ("entry", "kind", "round", "method", "requests", "erased_at_time", "status")}
                    for r in history],
        "verify": {"exit_code": proc.returncode, "ok": verify["ok"], "seconds": t_verify, "rounds": verify["rounds"],
                   "problems": verify["problems"]},
        "verify_hand_altered": {"exit_code": proc_alt.returncode, "ok": verify_altered["ok"],
                                "problems": verify_altered["problems"],
                                "altered_tensors_of_rounds": verify_altered["weights"].get("altered_tensors_of_rounds")},
        "revert": {"to_round": args.revert_to, "seconds": t_revert, "byte_identical_to_copy_after_previous_round": identical,
                   "verify_exit_code": proc_rv.returncode, "verify_ok": verify_reverted["ok"]},
        "sizes_bytes": {"model_safetensors": (out / "model.safetensors").stat().st_size,
                        "edit_state": (out / "unierase_state.safetensors").stat().st_size,
                        "revert_data_all_rounds": _size(out / "unierase_deltas"),
                        "revert_data_per_round": [(out / e["delta"]["file"]).stat().st_size for e in entries],
                        "ledger": (out / "unierase_ledger.jsonl").stat().st_size},
        "edited_matrix_encodings": sorted({(i["kind"], i.get("rank")) for i in edited.values()}, key=str),
        # the guard against a wrecked model, per round: mean teacher-forced agreement with the answers before it
        "guard": [{"round": i + 1, **{k: e["guard"][k] for k in ("questions", "mean_agreement", "min_agreement",
                                                                  "collapsed")}}
                  for i, e in enumerate(entries) if "guard" in e],
        "history_seconds": t_history,
    }
    figures["commit"] = repo_commit()
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps({k: figures[k] for k in ("verify", "verify_hand_altered", "revert", "sizes_bytes")}, indent=2))


if __name__ == "__main__":
    main()
