"""How selective is an edit under each null-space rule? A cheap proxy, no edit is made.

For the demo's forget facts (keys at their entity token) and 80 other facts (entity token and every
prompt/answer position) at the first and last edited layer: the share of a forget key the update
can use ("reach") and how strongly another key responds relative to the forget key it resembles
most (|<P k_o, P k_f>| / ||P k_f||²; for MEMIT the C0⁻¹-weighted analogue). Lower response = fewer
unrelated answers changed. Prints one line per (layer, rule) and writes a JSON.

    python benchmarks/nullspace_proxy.py [OUT.json]
"""
import json
import sys

import torch

from unierase.demo import pick_neighbours
from unierase.edit_checks import load_demo_facts
from unierase.edit.config import EditConfig
from unierase.edit.prompts import entity_char_end
from unierase.edit.keys import token_keys, request_keys
from unierase.edit.prompts import build_edit_prompts, EditPrompt
from unierase.edit.stats import get_key_statistics
from unierase.models.loading import load_model, model_fingerprint
from unierase.models.adapters import find_mlp_output
from unierase.generation import generate_answer_ids
from unierase.prompts import encode_text, render_prompt
from unierase.storage import default_cache_dir


def main() -> None:
    torch.set_num_threads(1)
    facts = load_demo_facts()
    fr = [f for f in facts if f["role"] == "forget"]
    others = pick_neighbours(facts, fr, 80)
    model, tok = load_model()
    adapter = find_mlp_output(model)
    layers = EditConfig().resolved_layers(adapter.num_layers)
    stats, _ = get_key_statistics(model, tok, adapter, layers, fingerprint=model_fingerprint(model), cache_dir=default_cache_dir(), num_tokens=200_000, progress=False)
    pad = tok.pad_token_id
    fprompts, oprompts = [], []
    for i, f in enumerate(fr):
        fprompts += build_edit_prompts(tok, f["question"], i, entity_char_end(f["question"]), 2)
    for i, f in enumerate(others):
        oprompts += build_edit_prompts(tok, f["question"], i, entity_char_end(f["question"]), 0)
    answers = generate_answer_ids(model, tok, [f["question"] for f in others], max_new_tokens=24)
    full = [EditPrompt(i, 0, encode_text(tok, render_prompt(tok, f["question"])) + a, 0, (0, 1)) for i, (f, a) in enumerate(zip(others, answers))]
    res = {}
    for layer in (layers[0], layers[-1]):
        C = stats.covariance(layer, 1.0).double()
        ev, U = torch.linalg.eigh((C + C.T) / 2)
        Kf = request_keys(model, adapter, layer, fprompts, len(fr), pad).double()  # m x N
        Ko = request_keys(model, adapter, layer, oprompts, len(others), pad).double()
        allk = torch.cat([k for k in token_keys(model, adapter, layer, full, pad)]).double()  # T x m
        rules = {}
        for t in (1e-2, 1e-3, 1e-4):
            rules[f"rel{t:g}"] = ev < t * ev.max()
        for t in (1e-1, 1e-2, 1e-3):
            rules[f"relmean{t:g}"] = ev < t * ev.mean()
        cs = torch.cumsum(ev, 0) / ev.sum()
        for e in (1e-2, 1e-3, 1e-4):
            rules[f"energy{e:g}"] = cs < e
        for name, keep in rules.items():
            B = U[:, keep]
            P = B @ B.T
            pf, po, pa = P @ Kf, P @ Ko, allk @ P
            reach = (pf.norm(dim=0) / Kf.norm(dim=0)).mean().item()
            # response of a minimal-norm rank-N update through P: sum over forget of <P k_o, P k_f>/|P k_f|^2
            G = pf / pf.norm(dim=0).pow(2).clamp(min=1e-30)
            resp_o = (po.T @ G).abs().max(dim=1).values
            resp_a = (pa @ G).abs().max(dim=1).values
            res.setdefault(layer, {})[name] = dict(null_dim=int(keep.sum()), reach=round(reach, 4),
                other_entity_resp_mean=round(resp_o.mean().item(), 4), other_entity_resp_p95=round(resp_o.quantile(0.95).item(), 4),
                all_pos_resp_mean=round(resp_a.mean().item(), 4), all_pos_resp_p99=round(resp_a.quantile(0.99).item(), 4),
                all_pos_null_energy=round((pa.norm(dim=1).pow(2).sum() / allk.norm(dim=1).pow(2).sum()).item(), 4))
            print(layer, name, res[layer][name], flush=True)
        for lam in (1e2, 1e3, 1e4, 1e5):
            A = lam * C + Kf @ Kf.T
            Ainv_f = torch.linalg.solve(A, Kf)  # m x N
            # minimal update dW = R Kf^T A^-1 ; response of k to forget f: k^T A^-1 k_f relative to k_f^T A^-1 k_f
            diag = (Kf * Ainv_f).sum(0)
            G = Ainv_f / diag
            resp_o = (Ko.T @ G).abs().max(dim=1).values
            resp_a = (allk @ G).abs().max(dim=1).values
            res[layer][f"memit{lam:g}"] = dict(reach=round(diag.mean().item(), 4), other_entity_resp_mean=round(resp_o.mean().item(), 4),
                other_entity_resp_p95=round(resp_o.quantile(0.95).item(), 4), all_pos_resp_mean=round(resp_a.mean().item(), 4),
                all_pos_resp_p99=round(resp_a.quantile(0.99).item(), 4))
            print(layer, f"memit{lam:g}", res[layer][f"memit{lam:g}"], flush=True)
    json.dump(res, open(sys.argv[1] if len(sys.argv) > 1 else 'nullspace_proxy.json', 'w'), indent=1)


if __name__ == "__main__":
    main()
