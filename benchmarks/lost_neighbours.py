"""Where an edit loses the calibration neighbours it loses: which answer token turns, through which
positions, and how much of the change is one erased request's write.

Erases the model's calibration split (the 24 facts ``calibrate`` erases per trial, questions only)
with ``--recipe``'s settings, as ``calibration_trial.py`` does, and for every known neighbour that is
no longer answered correctly:

- the unedited model's greedy answer (16 tokens) and the first answer token the edited model,
  teacher-forced on it, predicts otherwise;
- at that token, the log-probability of the unedited model's token on the unedited model, on the
  edited one, and on the edited one with the MLP outputs of the edited layers put back to the
  unedited ones at some positions only: the subject's tokens, the whole prompt, the answer so far;
- at the last edited layer's output, the neighbour's change at its subject's last token against
  each erased request's change at its own key token: the request of the largest projection
  ``d_n·d_e / |d_e|²`` (the share of that request's write the neighbour received along it; a small
  write can give a large one), the request whose direction it follows most (the largest |cosine|),
  and the share of the neighbour's change that no single request's direction explains (1 − cos²).

Diagnosis only: nothing here chooses a setting, and only the calibration pool is looked at.

    python benchmarks/lost_neighbours.py [--model M] --recipe FILE [--results FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
from pathlib import Path

from rows import append_row, repo_commit  # the sibling module

RESULTS = Path(__file__).parent / "results" / "edit_variants" / "lost_neighbours.json"
ANSWER_TOKENS = 16


def _subject_positions(tokenizer, question: str, subject: str) -> tuple[list[int], list[int]]:
    """(the prompt's token ids, the positions of the subject's tokens in it)."""
    from unierase.prompts import encode_text, render_prompt

    text = render_prompt(tokenizer, question)
    ids = encode_text(tokenizer, text)
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    shift = len(ids) - len(enc["input_ids"])  # a BOS the plain encoding leaves out
    start = text.index(subject)
    end = start + len(subject)
    return ids, [i + shift for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > start]


@contextlib.contextmanager
def _mlp_outputs(adapter, layers, record: dict, put_back: tuple[dict, list[int]] | None = None):
    """Within: each edited layer's MLP output is recorded into ``record``; with ``put_back`` (recorded
    outputs, positions) those positions take the recorded outputs instead."""
    def hook(layer):
        def run(module, inputs, output):
            record[layer] = output.detach().clone()
            if put_back is not None:
                output = output.clone()
                output[:, put_back[1]] = put_back[0][layer][:, put_back[1]]
                return output
        return run
    handles = [adapter.mlp_output(layer).register_forward_hook(hook(layer)) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _turn(base, edited, tokenizer, layers, row: dict) -> dict:
    """Where the edited model's answer to ``row`` leaves the unedited one's, and what puts it back."""
    import torch

    from unierase.models.adapters import find_mlp_output

    ids, subject = _subject_positions(tokenizer, row["question"], row["subject"])
    with torch.no_grad():
        answer = base.generate(torch.tensor([ids]), max_new_tokens=ANSWER_TOKENS, do_sample=False)[0, len(ids):].tolist()
        predicted = edited(torch.tensor([ids + answer])).logits[0].argmax(-1).tolist()
    turn = next((j for j in range(len(answer)) if predicted[len(ids) - 1 + j] != answer[j]), None)
    out = {"question": row["question"], "answer": tokenizer.decode(answer), "turns_at": turn}
    if turn is None:
        return out
    prefix, token = ids + answer[:turn], answer[turn]

    def logp(model, put_back=None):
        recorded: dict = {}
        with _mlp_outputs(find_mlp_output(model), layers, recorded, put_back), torch.no_grad():
            logits = model(torch.tensor([prefix])).logits[0, -1].float()
        return round(float(torch.log_softmax(logits, -1)[token]), 3), recorded, tokenizer.decode([int(logits.argmax())])

    unedited, recorded, _ = logp(base)
    out.update({"unedited_token": tokenizer.decode([token]), "logp_unedited": unedited})
    out["logp_edited"], _, out["edited_token"] = logp(edited)
    for name, positions in (("subject", subject), ("prompt", list(range(len(ids)))),
                            ("answer_so_far", list(range(len(ids), len(prefix))))):
        lp, _, top = logp(edited, (recorded, positions))
        out[f"put_back_{name}"] = {"logp": lp, "token": top, "answer_restored": top == out["unedited_token"]}
    return out


def _change_at_key(base, edited, tokenizer, z_layer: int, question: str, subject: str):
    """The last edited layer's output change at the subject's last token."""
    import torch

    from unierase.models.adapters import find_mlp_output
    from unierase.models.tracing import trace

    ids, positions = _subject_positions(tokenizer, question, subject)
    states = []
    for model in (base, edited):
        with trace(find_mlp_output(model).block(z_layer), keep_output=True) as rec, torch.no_grad():
            model(torch.tensor([ids]))
        output = rec.output[0] if isinstance(rec.output, tuple) else rec.output
        states.append(output[0, positions[-1]].float())
    return states[1] - states[0]


def main() -> None:
    import torch

    from unierase.calibrate.run import calibration_split
    from unierase.demo import erase_and_measure
    from unierase.edit.recipes import Recipe, apply_recipe
    from unierase.models.adapters import find_mlp_output
    from unierase.record.rounds import load_checked_model
    from unierase.storage import default_cache_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a --model value (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--recipe", required=True, help="a recipe file whose 'edit' settings the erasure runs")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()

    base, tokenizer = load_checked_model(args.model)
    root = default_cache_dir()
    forget_rows, neighbours = calibration_split(base, tokenizer, cache_dir=root)  # what every calibration trial erases
    recipe = json.loads(Path(args.recipe).read_text())
    config = apply_recipe(Recipe("trial", {"model_type": None}, recipe["edit"]), {})
    edited = copy.deepcopy(base)
    measured = erase_and_measure(edited, copy.deepcopy(tokenizer), forget_rows, neighbours, cache_dir=root,
                                 progress=False, edit_config=config)
    layers = config.resolved_layers(find_mlp_output(base).num_layers)
    erased = torch.stack([_change_at_key(base, edited, tokenizer, layers[-1], r["question"], r["subject"])
                          for r in forget_rows])
    lost = []
    for question in measured.summary["neighbours"]["no_longer_correct"]:
        row = next(r for r in neighbours if r["question"] == question)
        entry = _turn(base, edited, tokenizer, layers, row)
        change = _change_at_key(base, edited, tokenizer, layers[-1], question, row["subject"])
        projection = erased @ change / erased.norm(dim=-1).pow(2)
        cosine = torch.nn.functional.cosine_similarity(erased, change[None], dim=-1)
        top, closest = int(projection.argmax()), int(cosine.abs().argmax())  # a direction either way
        entry["change_at_subject"] = {
            "norm": round(float(change.norm()), 1),
            "largest_projection": {"request": forget_rows[top]["question"], "projection": round(float(projection[top]), 3),
                                   "cosine": round(float(cosine[top]), 3)},
            "largest_cosine": {"request": forget_rows[closest]["question"], "cosine": round(float(cosine[closest]), 3),
                               "projection": round(float(projection[closest]), 3)},
            "unexplained_share": round(float(1 - cosine[closest] ** 2), 3)}
        lost.append(entry)
        print(json.dumps(entry))
    row = {"model": args.model or "smollm2-135m-instruct", "recipe": recipe.get("name"), "edit": recipe["edit"],
           "known_still_correct": measured.summary["neighbours"]["known_still_correct"],
           "erased_change_norm_median": round(float(erased.norm(dim=-1).median()), 1),
           "lost": lost, "commit": repo_commit()}
    append_row(args.results, __doc__.split("\n\n")[0], row)


if __name__ == "__main__":
    main()
