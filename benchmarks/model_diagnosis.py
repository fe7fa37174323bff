"""Why an edit setting falls short on a model: the measurements behind docs/design.md ("Any model").

For a model (default Gemma 3 270M) and SmolLM2 beside it: the RMS of the residual stream at the
key token by layer (the scale the value steps move in), the spectrum of the preserved-key
statistics C₀ at the edited layers (how much the null-space threshold frees), and, for the three
facts of ``model_guard.py``, the edit's own pass records (value −log p before/after, ‖δ‖/‖h₀‖,
the residual left after each pass, reached) under each ``--variant`` JSON of recipe ``edit``
fields (in memory, three passes; nothing is written).

    python benchmarks/model_diagnosis.py --model gemma3-270m --variant '{}' --variant '{"values": {"lr": 8.0}}'

Writes ``benchmarks/results/models/diagnosis.json`` (the model's entry replaced).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rows import repo_commit  # the sibling module

import torch

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "models" / "diagnosis.json"
FACTS = [("Who wrote Hamlet?", "Hamlet"), ("What is the capital of Japan?", "Japan"),
         ("Who painted the Mona Lisa?", "Mona Lisa")]


def residual_rms(model, tokenizer, layers: list[int]) -> dict:
    """Per layer: the RMS of the block's output at each fact's subject token (mean over the facts)."""
    from unierase.edit.prompts import build_edit_prompts

    out = {layer: [] for layer in layers}
    for question, subject in FACTS:
        prompt = build_edit_prompts(tokenizer, question, 0, question.index(subject) + len(subject), 0)[0]
        with torch.no_grad():
            states = model(input_ids=torch.tensor([prompt.input_ids]), output_hidden_states=True).hidden_states
        for layer in layers:
            out[layer].append(float(states[layer + 1][0, prompt.key_index].pow(2).mean().sqrt()))
    return {str(layer): round(sum(v) / len(v), 2) for layer, v in out.items()}


def spectrum(model, tokenizer, layers: list[int]) -> dict:
    """Per edited layer: how many of C₀'s directions the default threshold frees, the share of
    C₀'s trace they hold, and λ_max over the mean Rayleigh quotient of the facts' keys (C₀ from
    the cached key statistics, without the token's refusal keys)."""
    from unierase.edit.config import EditConfig
    from unierase.edit.stats import get_key_statistics
    from unierase.models.adapters import find_mlp_output
    from unierase.models.loading import model_fingerprint
    from unierase.storage import default_cache_dir

    from unierase.edit.stats import accumulate_refusal_key_moments
    from unierase.token.cache import ensure_unlearning_token
    from unierase.token.training import UnlearningTokenConfig

    adapter = find_mlp_output(model)
    config = EditConfig(layers=layers)
    fingerprint = model_fingerprint(model)
    stats, _ = get_key_statistics(model, tokenizer, adapter, layers, fingerprint=fingerprint,
                                  cache_dir=default_cache_dir(), num_tokens=config.stats_tokens, progress=False)
    # the refusal keys need the unlearning token (the one a default round trains, from the cache)
    token = ensure_unlearning_token(model, tokenizer, fingerprint=fingerprint, cache_dir=default_cache_dir(),
                                    config=UnlearningTokenConfig(refusal=config.refusal), augment_layers=layers,
                                    progress=False)
    stats.refusal_moments, stats.refusal_count = accumulate_refusal_key_moments(model, tokenizer, adapter, layers,
                                                                                token.token_id, refusal=config.refusal)
    out = {}
    for layer in layers:
        out[str(layer)] = {family: _spectrum_of(stats.covariance(layer, config.question_key_weight, weight,
                                                                 config.answer_key_weight).double(),
                                                model, tokenizer, adapter, layer, config)
                           for family, weight in (("without_refusal_keys", 0.0),
                                                  ("as_edited", config.refusal_key_weight))}
    return out


def _spectrum_of(c, model, tokenizer, adapter, layer: int, config) -> dict:
    from unierase.edit.prompts import build_edit_prompts

    eig = torch.linalg.eigvalsh(c)
    free = eig < config.null_space_threshold * eig[-1]
    quotients = []
    for question, subject in FACTS:
        prompt = build_edit_prompts(tokenizer, question, 0, question.index(subject) + len(subject), 0)[0]
        captured = []
        handle = adapter.mlp_output(layer).register_forward_pre_hook(lambda m, a: captured.append(a[0][0]))
        with torch.no_grad():
            model(input_ids=torch.tensor([prompt.input_ids]))
        handle.remove()
        k = captured[0][prompt.key_index].double()
        quotients.append(float(k @ c @ k / (k @ k)))
    return {"dims": len(eig), "free_at_default_threshold": int(free.sum()),
            "trace_share_free": round(float(eig[free].sum() / eig.sum()), 4),
            "lambda_max_over_key_quotient": round(float(eig[-1]) / (sum(quotients) / len(quotients)), 1)}


def passes(model_name: str, edit: dict) -> dict:
    import unierase
    from unierase.edit.recipes import Recipe, apply_recipe
    from unierase.models.loading import load_model

    model, tokenizer = load_model(model_name)
    config = apply_recipe(Recipe("diagnosis", {"model_type": None}, {"max_passes": 3, **edit}), {})
    result = unierase.forget([{"question": q} for q, _ in FACTS], None, model=model, tokenizer=tokenizer,
                             progress=False, edit_config=config)
    last = result.manifest["rounds"][-1]
    rows = []
    for p in last["passes"]:
        v = p["values"]
        rows.append({"reached": p["reached"], "residual_left": p["residual_left"],
                     "nll_before": v["initial_nll"], "nll_after": v["final_nll"], "delta_over_h0": v["delta_norm_ratio"]})
    answers = unierase.ask([q for q, _ in FACTS] + ["What is the capital of France?"], model=model, tokenizer=tokenizer,
                           max_new_tokens=12)
    return {"edit": edit, "layers": last["layers"], "passes": rows, "null_space_dims": last["null_space_dims"],
            "answers_after": answers}


def main() -> None:
    from unierase.edit.config import default_layers
    from unierase.models.loading import load_model
    from unierase.storage import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--variant", action="append", default=[], help="recipe edit fields as JSON; repeatable")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    entry = {}
    for name in (args.model, "smollm2-135m-instruct"):
        model, tokenizer = load_model(name)
        layers = default_layers(model.config.num_hidden_layers)
        entry[name] = {"default_layers": layers,
                       "residual_rms_at_subject": residual_rms(model, tokenizer, sorted({*layers, max(layers) + 4})),
                       "preserved_keys": spectrum(model, tokenizer, layers)}
        del model
    entry["passes"] = [passes(args.model, json.loads(v)) for v in args.variant]
    entry["commit"] = repo_commit()
    print(json.dumps(entry, indent=1))
    data = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else {}
    data["description"] = __doc__.split("\n\n")[0]
    data[args.model] = entry
    write_json_atomic(RESULTS, data)


if __name__ == "__main__":
    main()
