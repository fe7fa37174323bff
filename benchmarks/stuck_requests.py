"""Why an edit's passes stop reaching some requests: where each layer's write goes.

Erases TOFU forget01 (questions only, ``--scope``) from a target, as ``entity_scope.py`` does, with
two probes on the passes that run at most ``--probe-at`` requests (the late ones, where only the
hard requests are left):

- per edited layer, before its solve: the distance of each request's value at the last edited
  layer (at its key token) from its target, so a layer whose write does not move the values shows;
- per edited layer, at its solve: the share of each key inside the free (null-space) subspace, and
  the share of the layer's intended MLP-output change that the closed form does not realise, with
  the full system (as run), without the sequential state of reached requests, and with neither.

Then the first answer token of every forget question and paraphrase on the erased model. Diagnosis
only: nothing here chooses a setting.

    python benchmarks/stuck_requests.py --target DIR [--probe-at 6] [--results FILE]
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from rows import repo_commit  # the sibling module

RESULTS = Path(__file__).parent / "results" / "edit_variants" / "gemma_tofu_stuck_requests.json"


def _unrealised(solve, keys, residuals, basis, kept, ridge) -> list[float]:
    """Per column: ‖ΔW k − r‖ / ‖r‖ for the AlphaEdit update solved with ``kept`` as the preserved term."""
    import torch

    update = solve.alphaedit_factors_in_basis(keys, residuals, basis, kept, ridge).dense()
    wrote = update @ keys.to(update.device, torch.float64)
    r = residuals.to(update.device, torch.float64)
    return [round(float(x), 3) for x in (wrote - r).norm(dim=0) / r.norm(dim=0).clamp(min=1e-12)]


@contextlib.contextmanager
def _probes(editor, solve, probe_at: int, log: list[dict]):
    """Within: the editor's target values, key pass and the AlphaEdit solver record into ``log``."""
    run_targets, run_keys, run_solver = editor._target_values, editor.request_keys_and_values, solve.SOLVERS["alphaedit"]
    held = {}

    def targets(*args, **kwargs):
        z, report = run_targets(*args, **kwargs)
        held["targets"] = z
        if z.shape[1] <= probe_at:
            log.append({"requests": z.shape[1], "layers": []})
        return z, report

    def keys_and_values(model, adapter, layer, z_layer, prompts, n, pad, lower=None):
        keys, current = run_keys(model, adapter, layer, z_layer, prompts, n, pad, lower=lower)
        if n <= probe_at:
            log[-1]["layers"].append({"layer": layer, "distance_before": [
                round(float(x), 1) for x in (held["targets"] - current).norm(dim=0)]})
        return keys, current

    def alphaedit(keys, residuals, *, layer, config, preserved, soft):
        if keys.shape[1] <= probe_at:
            basis, state, ridge = solve.alphaedit_terms(keys, layer=layer, config=config, preserved=preserved)
            k = keys.double().to(basis.device)
            log[-1]["layers"][-1].update({
                "key_share_in_null_space": [round(float(x), 3) for x in
                                            (basis.double().T @ k).norm(dim=0) / k.norm(dim=0)],
                "unrealised_as_run": _unrealised(solve, keys, residuals, basis, solve.summed(state, soft), ridge),
                "unrealised_without_state": _unrealised(solve, keys, residuals, basis, soft, ridge),
                "unrealised_null_space_only": _unrealised(solve, keys, residuals, basis, None, ridge)})
        return run_solver.update(keys, residuals, layer=layer, config=config, preserved=preserved, soft=soft)

    editor._target_values, editor.request_keys_and_values = targets, keys_and_values
    solve.SOLVERS["alphaedit"] = solve.Solver("alphaedit", True, alphaedit)
    try:
        yield
    finally:
        editor._target_values, editor.request_keys_and_values = run_targets, run_keys
        solve.SOLVERS["alphaedit"] = run_solver


def main() -> None:
    from reach_check import erased_first_tokens, forget01  # the sibling script's helpers

    from unierase.edit import editor, solve
    from unierase.storage import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="a TOFU target (unierase finetune's output)")
    parser.add_argument("--scope", default="entity", choices=["auto", "fact", "entity"])
    parser.add_argument("--probe-at", type=int, default=6, help="probe the passes that run at most this many requests")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()

    forget, paraphrased = forget01(args.data_dir)
    probes: list[dict] = []
    with _probes(editor, solve, args.probe_at, probes):
        manifest, firsts, token_id = erased_first_tokens(args.target, args.scope, {
            "forget": [r.question for r in forget], "paraphrased": paraphrased})
    last = manifest["rounds"][-1]
    missed = {name: [i for i, t in enumerate(ids) if t != token_id] for name, ids in firsts.items()}
    write_json_atomic(Path(args.results), {
        "description": __doc__.split("\n\n")[0], "target": Path(args.target).name, "scope": args.scope,
        "commit": repo_commit(), "layers": last["layers"], "recipe": last.get("recipe"),
        "passes": [{"requests": p["requests"], "reached": p["reached"], "residual_left": p["residual_left"],
                    "undone": p.get("undone")} for p in last["passes"]],
        "not_reached": [r["question"] for r in last["requests"] if r["sha256"] in set(last["not_reached"])],
        "first_token_missed": {name: [(forget[i].question if name == "forget" else paraphrased[i]) for i in idx]
                               for name, idx in missed.items()},
        "probed_passes": probes})
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
