"""Record the TOFU target/retain fine-tuning and run the eight baselines on the target via the CLI.

Two stages, each writing a small JSON (and Markdown table) to ``benchmarks/results/``:

``targets``   summarise finished ``unierase finetune`` runs (their manifests: subset, settings, wall
              time, peak memory, memorisation ROUGE-L recall on the model's own training QA), and
              score the forget-author and retain-author questions separately::

                  unierase finetune --data tofu:full --authors 2 --forget-authors 1 --out RUNS/target \\
                      --epochs 8 --lr 3e-4 --batch-size 8 --threads 1 --eval-items -1
                  unierase finetune ... --split retain --out RUNS/retain
                  python benchmarks/bench_baselines.py targets --target RUNS/target --retain-model RUNS/retain

``baselines`` run ``unierase forget --method M`` for every baseline on the target (forget = the
              subset's forget authors, retain = its retain authors), then measure the forget- and
              retain-answer NLL (teacher forcing) and, with ``--generate``, ROUGE-L recall of
              greedy answers::

                  python benchmarks/bench_baselines.py baselines --target RUNS/target --runs RUNS/baselines

Data: ``--data-dir`` or ``$UNIERASE_DATA`` (the folder holding ``tofu/``). Models and checkpoints
stay outside the repository; only the small result files are written here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _manifest(path: Path) -> dict:
    return json.loads((Path(path) / "unierase_manifest.json").read_text())


def _subset_from_manifest(manifest: dict, data_dir):
    from unierase.baselines.data import tofu_subset

    data = manifest["data"]
    first, last = (int(x) for x in data["retain_authors"].split("-"))
    n_forget = data.get("n_forget", 20) // 20
    n_retain = last - first + 1
    return tofu_subset(n_retain + n_forget, n_forget, data_dir)


def score(model_dir, items, *, generate: bool, threads: int, max_new_tokens: int = 128) -> dict:
    """Mean answer NLL (teacher forcing) and optionally ROUGE-L recall of greedy answers."""
    import torch

    from unierase.baselines import losses
    from unierase.baselines.finetune import generate_answers, rouge_l_recall
    from unierase.baselines.trainer import collate, encode_pairs
    from unierase.models.loading import load_model

    torch.set_num_threads(threads)
    model, tok = load_model(str(model_dir))
    enc = encode_pairs(tok, [(r.question, r.answer) for r in items], 256)
    total = tokens = 0.0
    with torch.no_grad():
        for i in range(0, len(enc), 8):
            batch = collate(enc[i:i + 8], tok.pad_token_id, "cpu")
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            total -= losses.sequence_logprob(logits, batch["labels"]).sum().item()
            tokens += (batch["labels"][:, 1:] != -100).sum().item()
    out = {"answer_nll": round(total / tokens, 4), "items": len(items)}
    if generate:
        preds = generate_answers(model, tok, [r.question for r in items], max_new_tokens=max_new_tokens)
        scores = rouge_l_recall(preds, [r.answer for r in items])
        out["rougeL_recall"] = round(sum(scores) / len(scores), 4)
        out["example"] = {"question": items[0].question, "generated": preds[0]}
    return out


def stage_targets(args) -> dict:
    record = {"stage": "targets", "machine": "2 shared CPU cores (see ENVIRONMENT.md)", "models": {}}
    for name, path in (("target", args.target), ("retain", args.retain_model)):
        if not path:
            continue
        m = _manifest(path)
        entry = {k: m.get(k) for k in ("data", "hyperparameters", "timings_s", "peak_memory_mb", "threads", "memorisation", "train")}
        entry["path"] = str(path)
        if args.split_scores:
            subset = _subset_from_manifest(m, args.data_dir)
            entry["forget_authors"] = score(path, subset.forget, generate=True, threads=args.threads)
            entry["retain_authors"] = score(path, subset.retain, generate=True, threads=args.threads)
        record["models"][name] = entry
    return record


def stage_baselines(args, save=lambda record: None) -> dict:
    from unierase.registry import methods as registered_methods

    target = Path(args.target)
    subset = _subset_from_manifest(_manifest(target), args.data_dir)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    requests = runs / "forget_requests.jsonl"
    requests.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in subset.forget), encoding="utf-8")
    retain = runs / "retain.jsonl"
    retain.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in subset.retain), encoding="utf-8")
    fine_tuning = [name for name, method in registered_methods().items() if method.family == "fine-tuning"]
    methods = fine_tuning if args.methods == "all" else args.methods.split(",")
    record = {"stage": "baselines", "target": str(target), "subset": subset.describe(),
              "settings": {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "threads": args.threads},
              "before": {"forget": score(target, subset.forget, generate=args.generate, threads=args.threads),
                         "retain": score(target, subset.retain, generate=args.generate, threads=args.threads)},
              "methods": {}}
    for method in methods:
        out = runs / method.replace("+", "_")
        cmd = [sys.executable, "-m", "unierase.cli", "forget", "--method", method, "--model", str(target),
               "--requests", str(requests), "--retain", str(retain), "--out", str(out), "--overwrite",
               "--epochs", str(args.epochs), "--lr", str(args.lr), "--batch-size", str(args.batch_size),
               "--threads", str(args.threads), "--no-progress"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        entry = {"command": " ".join(cmd[2:]), "rc": proc.returncode, "wall_s": round(wall, 1)}
        if proc.returncode:
            entry["error"] = (proc.stderr.strip().splitlines() or [""])[-1]
        else:
            m = _manifest(out)
            entry.update({"timings_s": m["timings_s"], "peak_memory_mb": m["peak_memory_mb"],
                          "forget_answer_nll": m["forget_answer_nll"], "steps": m["train"]["steps"],
                          "forget": score(out, subset.forget, generate=args.generate, threads=args.threads),
                          "retain": score(out, subset.retain, generate=args.generate, threads=args.threads)})
        record["methods"][method] = entry
        save(record)  # after every method, so an interrupted run keeps what it measured
        print(method, json.dumps(entry)[:300], flush=True)
    return record


def to_markdown(record: dict) -> str:
    if record["stage"] == "targets":
        lines = ["| model | items | epochs | lr | train s | peak MB | ROUGE-L recall (own QA) | forget-author ROUGE | retain-author ROUGE |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for name, e in record["models"].items():
            hp, mem = e["hyperparameters"], e.get("memorisation") or {}
            lines.append(f"| {name} | {e['data']['n_items']} | {hp['epochs']} | {hp['lr']} | {e['timings_s']['train']} | "
                         f"{e['peak_memory_mb']} | {mem.get('rougeL_recall', '')} | "
                         f"{(e.get('forget_authors') or {}).get('rougeL_recall', '')} | {(e.get('retain_authors') or {}).get('rougeL_recall', '')} |")
        return "\n".join(lines) + "\n"
    lines = ["| method | rc | wall s | peak MB | forget NLL | retain NLL | forget ROUGE | retain ROUGE |", "|---|---|---|---|---|---|---|---|"]
    b = record["before"]
    lines.append(f"| (target) | | | | {b['forget']['answer_nll']} | {b['retain']['answer_nll']} | "
                 f"{b['forget'].get('rougeL_recall', '')} | {b['retain'].get('rougeL_recall', '')} |")
    for name, e in record["methods"].items():
        f, r = e.get("forget", {}), e.get("retain", {})
        lines.append(f"| {name} | {e['rc']} | {e['wall_s']} | {e.get('peak_memory_mb', '')} | {f.get('answer_nll', '')} | "
                     f"{r.get('answer_nll', '')} | {f.get('rougeL_recall', '')} | {r.get('rougeL_recall', '')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    t = sub.add_parser("targets")
    t.add_argument("--target", required=True)
    t.add_argument("--retain-model", default=None)
    t.add_argument("--split-scores", action="store_true", help="also generate on forget- and retain-author questions separately")
    b = sub.add_parser("baselines")
    b.add_argument("--target", required=True)
    b.add_argument("--runs", required=True, help="where the baseline checkpoints go (outside the repository)")
    b.add_argument("--methods", default="all")
    b.add_argument("--epochs", type=float, default=5)
    b.add_argument("--lr", type=float, default=1e-5)
    b.add_argument("--batch-size", type=int, default=8)
    b.add_argument("--generate", action="store_true", help="also ROUGE-L of greedy answers (slower)")
    for p in (t, b):
        p.add_argument("--data-dir", default=os.environ.get("UNIERASE_DATA"))
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--name", default=None, help="result file stem (default: tofu_targets / baselines_target)")
    args = parser.parse_args()
    stem = args.name or ("tofu_targets" if args.stage == "targets" else "baselines_target")
    RESULTS.mkdir(exist_ok=True)

    def save(record: dict) -> None:
        (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        (RESULTS / f"{stem}.md").write_text(to_markdown(record))

    record = stage_targets(args) if args.stage == "targets" else stage_baselines(args, save)
    save(record)
    print(to_markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
