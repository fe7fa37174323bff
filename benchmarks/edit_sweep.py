"""Sweep of edit settings on the demo facts, with the target values cached between variants.

The target values (phase "values", the slow part) depend only on the model, the prompts and the
ValueConfig, so variants that differ only in the solver, the statistics weights or the null-space
threshold reuse them from ``--work``. Each variant edits the same 24 demo facts (questions only)
and is measured on 80 other facts like ``edit_quality.py`` (without the token and paraphrase
checks). Used to choose the defaults; results: benchmarks/results/edit_variants/locality_sweep.json.

    python benchmarks/edit_sweep.py --passes 4 --values '{"clamp_factor": 0.4}' \
        --variants '[{"name": "a", "answer_key_weight": 2, "null_space_threshold": 0.003}]' --out sweep.json
"""
import argparse, hashlib, json, sys, time
from pathlib import Path
import torch

ap = argparse.ArgumentParser(description="Sweep of edit settings with cached target values.")
ap.add_argument("--variants", required=True, help="JSON list of dicts of EditConfig overrides (+ 'name')")
ap.add_argument("--values", default="{}", help="JSON ValueConfig overrides (shared by all variants)")
ap.add_argument("--passes", type=int, default=1)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--out", required=True)
ap.add_argument("--work", default=str(Path.home() / ".cache" / "unierase" / "sweep"),
                help="where the unedited snapshot and the target values are cached")
args = ap.parse_args()
torch.set_num_threads(args.threads)
EXP = Path(args.work)
EXP.mkdir(parents=True, exist_ok=True)

import unierase.edit.editor as editor
from unierase.api import forget
from unierase.demo import _pick_neighbours
from unierase.edit.editor import EditConfig
from unierase.edit.values import ValueConfig
from unierase.edit_checks import forget_metrics, load_demo_facts, retain_metrics, snapshot, Snapshot
from unierase.models.loading import load_model

facts = load_demo_facts()
forget_rows = [f for f in facts if f["role"] == "forget"]
others = _pick_neighbours(facts, forget_rows, 80)
n = len(forget_rows)
questions = [f["question"] for f in forget_rows] + [f["question"] for f in others]
model, tok = load_model()
bpath = EXP / "before.pt"
if bpath.exists():
    before = Snapshot(**torch.load(bpath))
else:
    before = snapshot(model, tok, questions, max_new_tokens=40)
    torch.save(before.__dict__, bpath)

real = editor.compute_target_values
state = {"fresh": True}
def cached(model_, adapter, z_layer, prompts, n_req, target_id, pad, config, progress, continuations=None, start_targets=None):
    if not state["fresh"]:  # later passes (warm-started) are computed, only the first pass's targets are shared
        return real(model_, adapter, z_layer, prompts, n_req, target_id, pad, config, progress, continuations=continuations,
                    start_targets=start_targets)
    state["fresh"] = False
    h = hashlib.sha256(json.dumps([[p.input_ids for p in prompts], target_id, config.to_dict(), continuations]).encode()).hexdigest()[:16]
    path = EXP / f"targets-{h}.pt"
    if path.exists():
        out = torch.load(path, weights_only=False)
        if not hasattr(out[2], "steps_per_request"):
            out[2].steps_per_request = []
        return out
    t = time.perf_counter()
    out = real(model_, adapter, z_layer, prompts, n_req, target_id, pad, config, progress, continuations=continuations)
    print(f"target values computed in {time.perf_counter()-t:.0f} s", flush=True)
    torch.save(out, path)
    return out
editor.compute_target_values = cached

from unierase.models.adapters import find_mlp_output
adapter = find_mlp_output(model)
saved = None
results = []
for v in json.loads(args.variants):
    v = dict(v); name = v.pop("name")
    config = EditConfig(max_passes=args.passes, values=ValueConfig(**json.loads(args.values)), **v)
    layers = config.resolved_layers(adapter.num_layers)
    if saved is None:
        saved = {l: adapter.weight(l).detach().clone() for l in range(adapter.num_layers)}
    else:
        with torch.no_grad():
            for l, w in saved.items():
                adapter.weight(l).copy_(w)
    state["fresh"] = True
    t = time.perf_counter()
    res = forget([{"question": f["question"]} for f in forget_rows], None, model=model, tokenizer=tok,
                 edit_config=config, progress=False)
    secs = time.perf_counter() - t
    token_id = res.manifest["token"]["id"]
    after = snapshot(model, tok, questions, max_new_tokens=40)
    fm = forget_metrics(after.slice(0, n), token_id)
    rm = retain_metrics(model, tok, before.slice(n, len(questions)), after.slice(n, len(questions)),
                        [f["answer"] for f in others], token_id)
    from unierase.generation import teacher_forced_agreement
    tf = teacher_forced_agreement(model, tok, before.questions[n:], before.answer_ids[n:])
    worst = sorted(zip(tf, questions[n:]))[:12]
    rnd = res.manifest["rounds"][-1]
    row = {"name": name, "overrides": v, "forget": {k: x for k, x in fm.items() if not isinstance(x, list)},
           "others": {k: x for k, x in rm.items() if not isinstance(x, list)},
           "others_with_unl": [q for q, f in zip(questions[n:], after.first_tokens[n:]) if f == token_id],
           "seconds": round(secs, 1), "tf_worst": [(round(a, 3), q) for a, q in worst],
           "tf_below_0.9": sum(a < 0.9 for a in tf), "passes": [(p_["requests"], p_["reached"]) for p_ in rnd["passes"]], "timings": rnd.get("timings_s"), "null_dims": rnd.get("null_space_dims"),
           "update_norms": rnd.get("update_norms")}
    print(json.dumps(row), flush=True)
    results.append(row)
    Path(args.out).write_text(json.dumps(results, indent=1))
