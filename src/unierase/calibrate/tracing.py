"""Where a model recalls a fact: causal tracing of its MLP outputs at the subject (ROME's method).

The subject's input embeddings are corrupted with Gaussian noise, which lowers the probability of
the model's own first answer token; then the clean MLP outputs of a window of consecutive layers
are put back at the subject's last token. The share of the lost probability a window restores
(its indirect effect) says how much of the recall runs through those layers' MLPs there — the
layers an edit keyed at the subject can rewrite.
"""

from __future__ import annotations

import contextlib

import torch

from ..edit.prompts import render_variants
from ..models.tracing import edit_output, trace


def subject_positions(tokenizer, question: str, subject: str) -> tuple[list[int], list[int]]:
    """(prompt ids as answered, token indices covering ``subject``'s last occurrence in ``question``)."""
    ids, offsets, q_start = render_variants(tokenizer, question, num_prefixes=0)[0]
    start = q_start + question.rfind(subject)
    end = start + len(subject)
    return ids, [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]


@torch.no_grad()
def window_effects(model, tokenizer, adapter, rows: list[dict], window: int, *, noise: float = 3.0, samples: int = 3,
                   seed: int = 0) -> dict:
    """Per window start ``s`` (layers ``s … s+window-1``): the mean share of the first answer token's
    probability that restoring those layers' clean MLP outputs at the subject's last token brings
    back, over ``rows`` (dicts with ``question`` and ``subject``) and ``samples`` noise draws.

    ``noise`` is the corruption's σ in units of the embeddings' standard deviation (3 as in ROME).
    Facts whose answer the corruption does not lower by at least a tenth are left out (they say
    nothing about where the recall happens)."""
    embed = model.get_input_embeddings()
    device = embed.weight.device
    num_layers = adapter.num_layers
    starts = list(range(num_layers - window + 1))
    generator = torch.Generator().manual_seed(seed)
    prepared = [(ids, span) for ids, span in (subject_positions(tokenizer, r["question"], r["subject"]) for r in rows) if span]
    scale = _embedding_std(model, [ids for ids, _ in prepared]) * noise
    effects = torch.zeros(len(starts))
    used = 0
    for ids, span in prepared:
        clean_probs, target, clean_outputs = _clean_run(model, adapter, ids, span[-1])
        batch = torch.tensor([ids] * (len(starts) + 1), device=device)
        restored = torch.zeros(len(starts))
        corrupted = 0.0
        for _ in range(samples):
            draw = torch.randn(len(span), clean_outputs[0].shape[-1], generator=generator) * scale
            probs = _corrupted_run(model, adapter, batch, span, draw, clean_outputs, starts, window)[:, target]
            corrupted += float(probs[0]) / samples
            restored += probs[1:].float().cpu() / samples
        lost = clean_probs - corrupted
        if lost < 0.1 * clean_probs:
            continue
        effects += (restored - corrupted) / lost
        used += 1
    mean = (effects / max(1, used)).tolist()
    return {"window": window, "starts": starts, "effects": [round(e, 4) for e in mean], "facts": used,
            "noise": noise, "samples": samples}


def _embedding_std(model, prompts: list[list[int]]) -> float:
    """Standard deviation of the input embeddings' outputs over the prompts' tokens (a scaled
    embedding, as Gemma's, included)."""
    embed = model.get_input_embeddings()
    tokens = torch.tensor(sorted({t for ids in prompts for t in ids}), device=embed.weight.device)
    return float(embed(tokens).float().std())


def _last_probs(model, batch: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model(input_ids=batch, logits_to_keep=1).logits[:, -1].float(), dim=-1)


def _clean_run(model, adapter, ids: list[int], position: int):
    """(p of the greedy first answer token, that token, each layer's MLP output at ``position``)."""
    batch = torch.tensor([ids], device=model.get_input_embeddings().weight.device)
    captures = []
    with contextlib.ExitStack() as stack:
        for layer in range(adapter.num_layers):
            captures.append(stack.enter_context(trace(adapter.mlp_output(layer), keep_output=True)))
        probs = _last_probs(model, batch)[0]
    target = int(probs.argmax())
    return float(probs[target]), target, [c.output[0, position].clone() for c in captures]


def _corrupted_run(model, adapter, batch: torch.Tensor, span: list[int], draw: torch.Tensor, clean_outputs, starts,
                   window: int) -> torch.Tensor:
    """Row 0: the subject corrupted; row 1 + j: corrupted, with layers ``starts[j] …`` restored."""
    position = span[-1]
    span_index = torch.tensor(span, device=batch.device)

    def corrupt(hidden):
        hidden = hidden.clone()
        hidden[:, span_index] += draw.to(device=hidden.device, dtype=hidden.dtype)
        return hidden

    def restorer(layer):
        rows = [1 + j for j, s in enumerate(starts) if s <= layer < s + window]

        def fn(hidden):
            if not rows:
                return hidden
            hidden = hidden.clone()
            hidden[rows, position] = clean_outputs[layer].to(device=hidden.device, dtype=hidden.dtype)
            return hidden
        return fn

    with contextlib.ExitStack() as stack:
        stack.enter_context(edit_output(model.get_input_embeddings(), corrupt))
        for layer in range(adapter.num_layers):
            stack.enter_context(edit_output(adapter.mlp_output(layer), restorer(layer)))
        return _last_probs(model, batch)


def best_window(effects: dict, first: int = 1) -> list[int]:
    """The layers of the window with the largest effect (the earliest of equals) among those
    starting at layer ``first`` or later. The first layer's MLP reads the corrupted embedding almost
    directly, so restoring it undoes much of the corruption itself wherever the recall happens:
    a window that includes it measures the token's identity more than its recall."""
    values = effects["effects"]
    allowed = [i for i, s in enumerate(effects["starts"]) if s >= first] or list(range(len(values)))
    start = effects["starts"][max(allowed, key=lambda i: (values[i], -i))]
    return list(range(start, start + effects["window"]))
