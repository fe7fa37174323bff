"""Can an edit at the subject's token tell an erased fact from the subject's other facts?

For a model, over the calibration pool's questions (never a scored set): at every layer, the share
of a rank-one edit written for one question's key that another question's key receives,
k_nᵀ C⁻¹ k_e / k_eᵀ C⁻¹ k_e (the closed form's update direction is C⁻¹ k_e; C the corpus key
moment the edit's statistics start from, with a ridge of 1e-3 of its mean eigenvalue). 1: the
other question gets the whole edit; 0: none of it. Median over the pairs of each kind:

- ``sibling``: the same subject with another relation ("What is the currency of Vietnam?" for
  "What language is spoken in Vietnam?");
- ``shape``: the same relation with another subject;
- ``neutral``: "Tell me about <subject>." for the question;
- ``unrelated``: pairs sharing neither (the floor).

Keys are taken at the subject's last token, as the edit takes them (``--at question_end``: at the
question's last token instead, where a causal model has read the relation too). Nothing here chooses a
setting: it measures how far the keys of this model tell the kinds apart at each layer. Appends
one row per model to ``--results``.

    python benchmarks/key_separation.py [--model M] [--tokens 20000] [--at subject|question_end]
"""

from __future__ import annotations

import argparse
import json
from itertools import permutations
from pathlib import Path

from rows import append_row, repo_commit  # the sibling module

RESULTS = Path(__file__).parent / "results" / "edit_variants" / "key_separation.json"


def leak_shares(keys, moment, ridge: float = 1e-3):
    """For keys K (m × n) and a key moment C (m × m): S[e, n] = k_nᵀ C⁻¹ k_e / k_eᵀ C⁻¹ k_e."""
    import torch

    m = moment.shape[0]
    c = moment + ridge * moment.diagonal().mean() * torch.eye(m, dtype=moment.dtype)
    solved = torch.linalg.solve(c, keys)  # C⁻¹ k_e per column
    gram = keys.T @ solved  # [n, e] = k_nᵀ C⁻¹ k_e
    return gram.T / gram.diagonal()[:, None]


def pair_kinds(rows: list[dict]) -> dict[str, list[tuple[int, int]]]:
    """Ordered (erased, other) pairs of pool rows by kind (``neutral`` is handled apart)."""
    kinds: dict[str, list[tuple[int, int]]] = {"sibling": [], "shape": [], "unrelated": []}
    for e, n in permutations(range(len(rows)), 2):
        same_subject = rows[e]["subject"] == rows[n]["subject"]
        same_relation = rows[e]["relation"] == rows[n]["relation"]
        if same_subject and not same_relation:
            kinds["sibling"].append((e, n))
        elif same_relation and not same_subject:
            kinds["shape"].append((e, n))
        elif not same_subject and not same_relation:
            kinds["unrelated"].append((e, n))
    return kinds


def main() -> None:
    import torch

    from unierase.calibrate.pool import load_pool
    from unierase.edit.keys import request_keys_at
    from unierase.edit.prompts import build_edit_prompts, subject_char_end
    from unierase.edit.stats import accumulate_key_moments
    from unierase.models.adapters import find_mlp_output
    from unierase.record.rounds import load_checked_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a --model value (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--tokens", type=int, default=20_000, help="corpus tokens for the key moment")
    parser.add_argument("--at", choices=("subject", "question_end"), default="subject",
                        help="the key token: the subject's last (as the edit keys), or the question's last")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()

    model, tokenizer = load_checked_model(args.model)
    adapter = find_mlp_output(model)
    layers = list(range(adapter.num_layers))
    rows = [r for r in load_pool() if r.get("subject") and r["subject"] in r["question"] and r.get("relation")]
    questions = [(r["question"], subject_char_end(r["question"], r["subject"])) for r in rows]
    questions += [(f"Tell me about {r['subject']}.", len("Tell me about ") + len(r["subject"])) for r in rows]
    if args.at == "question_end":
        questions = [(q, len(q)) for q, _ in questions]
    prompts = [p for i, (q, end) in enumerate(questions) for p in build_edit_prompts(tokenizer, q, i, end, 0)]
    keys = request_keys_at(model, adapter, layers, prompts, len(prompts), tokenizer.pad_token_id)
    stats = accumulate_key_moments(model, tokenizer, adapter, layers, num_tokens=args.tokens, progress=False)
    kinds, n = pair_kinds(rows), len(rows)
    per_layer = []
    for layer in layers:
        shares = leak_shares(keys[layer].double(), stats.moments[layer].double().cpu() / stats.count)
        medians = {kind: round(float(shares[tuple(torch.tensor(pairs).T)].median()), 4)
                   for kind, pairs in kinds.items() if pairs}
        medians["neutral"] = round(float(shares[torch.arange(n), torch.arange(n) + n].median()), 4)
        per_layer.append({"layer": layer, **medians})
        print(json.dumps(per_layer[-1]))
    row = {"model": args.model or "smollm2-135m-instruct", "key_token": args.at, "questions": n,
           "pairs": {kind: len(pairs) for kind, pairs in kinds.items()}, "corpus_tokens": stats.count,
           "layers": per_layer, "commit": repo_commit()}
    append_row(args.results, __doc__.split("\n\n")[0], row)


if __name__ == "__main__":
    main()
