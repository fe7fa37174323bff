"""Does the unlearning token turn up in ordinary answers before any edit?

Attaches the cached token of SmolLM2-135M-Instruct (trained on first use) to the unedited model and
generates greedy answers (64 tokens, ``refusals.STRAY_TOKENS``) to the neighbours of both
``erasure_holds.py`` splits and to the token's held-out generic questions; counts the answers that
hold the token (``refusals.holds_token``). Set beside the edited model's ``unl_anywhere`` it tells the
token's share of the stray tokens from the edit's. Writes ``benchmarks/results/token_strays.json``.

    python benchmarks/token_strays.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rows import repo_commit  # the sibling module

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "token_strays.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="token.FIELD=VALUE",
                        help="a setting of the token's training (another token, trained and cached once)")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    import torch

    from erasure_holds import split_facts
    from unierase.generation import generate_answer_ids
    from unierase.refusals import STRAY_TOKENS, holds_token
    from unierase.models.loading import load_model, model_fingerprint
    from unierase.edit.recipes import edit_config_for, parse_settings, token_with_settings
    from unierase.storage import write_json_atomic
    from unierase.token.cache import ensure_unlearning_token
    from unierase.token.questions import heldout_questions
    from unierase.token.training import UnlearningTokenConfig

    torch.set_num_threads(args.threads)

    settings = parse_settings(args.set)
    config = token_with_settings(UnlearningTokenConfig(), settings)
    model, tokenizer = load_model()
    layers = edit_config_for(model.config)[0].resolved_layers(model.config.num_hidden_layers)
    token = ensure_unlearning_token(model, tokenizer, fingerprint=model_fingerprint(model), cache_dir=None,
                                    config=config, augment_layers=layers, progress=True)
    sets = {}
    for split in ("tuning", "heldout"):
        _, neighbours = split_facts(split)
        sets[f"{split} neighbours"] = ([f["question"] for f in neighbours], STRAY_TOKENS)
    sets["generic held-out questions"] = (heldout_questions(), STRAY_TOKENS)
    out = {}
    for name, (questions, tokens) in sets.items():
        answers = generate_answer_ids(model, tokenizer, questions, max_new_tokens=tokens)
        holding = [(q, tokenizer.decode(a)) for q, a in zip(questions, answers) if holds_token(a, token.token_id)]
        out[name] = {"questions": len(questions), "max_new_tokens": tokens, "holding_token": len(holding),
                     "share": round(len(holding) / len(questions), 4),
                     "examples": [{"question": q, "answer": a} for q, a in holding][:8]}
        print(f"{name}: {len(holding)} of {len(questions)} answers hold the token")
    commit = repo_commit()
    write_json_atomic(Path(args.results), {
        "description": __doc__.split("\n\n")[0],
        "setting": "SmolLM2-135M-Instruct fp32 CPU, unedited, the cached unlearning token attached; greedy answers",
        "token": {"id": token.token_id, "cache_key": token.cache_key, "settings": settings["token"]}, "layers": layers,
        "commit": commit,
        "sets": out})


if __name__ == "__main__":
    main()
