"""Where an erased model's unlearning token fires inside other people's names, and why.

For a TOFU target and its entity-scope erasure (``entity_scope.py``'s output), teacher-forces the
first ``--rows`` retain questions with their gold answers (plain format or chat, as the model
answers) and records, per answer token, the erased model's probability of the unlearning token;
then, at the answer token where it is highest, the size of the edit's change ‖ΔW_l k_l‖ relative to
the layer's own output ‖W_l k_l‖ at every edited layer, and the erased questions' positions whose
keys are nearest to that token's key (cosine). Diagnosis only: nothing here chooses a setting.

    python benchmarks/name_probe.py --target DIR --erased DIR [--rows 0 20 40 60] [--results FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from rows import repo_commit  # the sibling module

RESULTS = Path(__file__).parent / "results" / "models" / "tofu" / "gemma3-270m_name_probe.json"


def main() -> None:
    import torch

    from unierase.baselines.data import load_tofu
    from unierase.models.adapters import find_mlp_output
    from unierase.models.loading import load_model
    from unierase.models.tracing import stop_after, trace
    from unierase.prompts import encode_text, has_chat_template, render_prompt
    from unierase.storage import default_cache_dir, write_json_atomic
    from bench_tofu import portable  # the sibling script's helper

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--erased", required=True)
    parser.add_argument("--rows", type=int, nargs="*", default=[0, 20, 41, 60], help="retain_perturbed rows probed (one per author of a 6-author target)")
    parser.add_argument("--nearest", type=int, default=8, help="nearest erased-question positions reported")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()

    target, tok = load_model(args.target)
    erased, _ = load_model(args.erased)
    manifest = json.loads((Path(args.erased) / "unierase_manifest.json").read_text())
    token_id, layers = manifest["token"]["id"], manifest["rounds"][-1]["layers"]
    before, after = find_mlp_output(target), find_mlp_output(erased)
    chat = has_chat_template(tok)

    def keys(ids: list[int]) -> dict[int, torch.Tensor]:
        with torch.no_grad(), contextlib.ExitStack() as stack:
            seen = {l: stack.enter_context(trace(before.mlp_output(l), keep_input=True)) for l in layers}
            with stop_after(before.mlp_output(max(layers))):  # the keys are all it reads
                target(torch.tensor([ids]))
        return {l: seen[l].input[0].float() for l in layers}

    retain = load_tofu("retain_perturbed", args.data_dir)
    # the round's questions as recorded (a round saved with --no-texts has none: then forget01's)
    requests = [r["question"] for r in manifest["rounds"][-1].get("requests", []) if r.get("question")] or \
        [r.question for r in load_tofu("forget01", args.data_dir)]
    erased_keys = []
    for q in requests:
        ids = encode_text(tok, render_prompt(tok, q, chat=chat))
        erased_keys.append((q, tok.convert_ids_to_tokens(ids), keys(ids)))

    probes = []
    for row in args.rows:
        q, a = retain[row].question, retain[row].answer
        text = render_prompt(tok, q, chat=chat)
        prompt, ids = encode_text(tok, text), encode_text(tok, text + " " + a)
        with torch.no_grad():
            p = erased(torch.tensor([ids])).logits[0].float().softmax(-1)[:, token_id]
        toks = tok.convert_ids_to_tokens(ids)
        answer = list(range(len(prompt) - 1, len(ids) - 1))  # positions predicting an answer token
        at = max(answer, key=lambda i: float(p[i]))
        k = keys(ids)
        change = {}
        for l in layers:  # weights are parameters: no graph wanted
            w0, w1 = before.mlp_output(l).weight.detach().float(), after.mlp_output(l).weight.detach().float()
            change[l] = round(float(((w1 - w0) @ k[l][at]).norm() / (w0 @ k[l][at]).norm()), 4)
        nearest = []
        for question, qtoks, qk in erased_keys:
            for l in layers:
                cos = torch.nn.functional.cosine_similarity(qk[l], k[l][at][None], dim=-1)
                i = int(cos.argmax())
                nearest.append({"cosine": round(float(cos[i]), 4), "layer": l, "token": qtoks[i], "question": question})
        nearest.sort(key=lambda n: -n["cosine"])
        probes.append({"row": row, "question": q,
                       "answer_tokens": [[toks[i + 1], round(float(p[i]), 4)] for i in answer],
                       "highest": {"after": toks[at], "next_gold": toks[at + 1], "p_token": round(float(p[at]), 4),
                                   "relative_change_by_layer": change, "nearest_erased_keys": nearest[:args.nearest]}})
        print(row, toks[at], round(float(p[at]), 3), change, flush=True)

    write_json_atomic(Path(args.results), {
        "description": __doc__.split("\n\n")[0],
        "target": portable(str(Path(args.target).resolve()), default_cache_dir(), "<cache>"),
        "erased": portable(str(Path(args.erased).resolve()), default_cache_dir(), "<cache>"),
        "layers": layers, "probes": probes,
        "commit": repo_commit(),
    })


if __name__ == "__main__":
    main()
