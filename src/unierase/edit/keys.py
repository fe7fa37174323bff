"""Edit keys: the input of a layer's MLP output projection at each request's key token."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..generation import shared_layout, shared_prefix_length
from ..models.adapters import MLPOutputAdapter
from ..models.tracing import replay_blocks, stop_after, trace
from ..requests import ForgetRequest
from ..storage import UniEraseError
from .options import KEY_POSITIONS
from .prompts import EditPrompt, entity_char_end, render_variants, subject_char_end


@dataclass
class LowerBlocks:
    """Recorded block outputs for batches of prompts, so that later passes over the same prompts
    skip the blocks below the recording: an edit round's key passes, where an update at layer l
    leaves every block below l as it was.

    Each ``capture_prompts`` call replays, for a batch recorded before, the output of the block
    recorded for it (blocks up to it are skipped), and records block ``keep``'s output for the next
    call. Set ``keep`` before a call to the highest block the next change of weights leaves alone
    (at or above the block replayed; a call that cannot reach it records nothing new)."""

    blocks: torch.nn.ModuleList
    keep: int
    outputs: dict[tuple, tuple[int, torch.Tensor]] = field(default_factory=dict)
    """Batch (its prompts' (request, variant) pairs) → (block index, that block's output)."""
    tuple_output: bool = False


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding (so padded and unpadded prompts give the same states)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def capture_prompts(model, modules: dict, prompts: list[EditPrompt], pad_id: int, *, output: bool | set = False,
                    batch_size: int = 32, shared_prefix: bool = True, lower: LowerBlocks | None = None
                    ) -> Iterator[tuple[list[EditPrompt], dict, torch.Tensor, torch.Tensor]]:
    """Run batches of prompts, recording each module's input (its output when ``output`` is True or
    a set containing the module's name).

    Yields ``(chunk, captured, starts, key_index)``: ``captured[name]`` is batch × width × dim,
    token t of row r sits at column ``starts[r] + t`` and ``key_index`` is each prompt's key column.
    With ``shared_prefix`` the tokens all prompts of a chunk share before their key tokens (a chat
    template's system turn) run once, uncaptured, as a cache: only tokens from the earliest key
    onwards are captured. The forward pass stops after the deepest module, so layers above it are
    never computed. With ``lower`` the blocks below a recorded block output are skipped (see
    ``LowerBlocks``; the captured modules must sit above the replayed block).
    """
    device = model.get_input_embeddings().weight.device
    order = {id(m): i for i, m in enumerate(model.modules())}
    # the module whose forward finishes last: a block finishes after everything inside it
    deepest = max(modules.values(), key=lambda m: (max(order[id(x)] for x in m.modules()), -order[id(m)]))
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start: start + batch_size]
        common = (shared_prefix_length([p.input_ids for p in chunk], limit=min(p.key_index for p in chunk))
                  if shared_prefix else 0)
        cache, ids, mask, positions = shared_layout(model, [p.input_ids for p in chunk], pad_id, common, stop=deepest)
        starts = torch.tensor([ids.shape[1] - len(p.input_ids) for p in chunk])
        key_idx = (starts + torch.tensor([p.key_index for p in chunk])).to(device)
        outputs = {name: output is True or (isinstance(output, set) and name in output) for name in modules}
        batch = tuple((p.request_index, p.variant) for p in chunk)
        replayed = lower.outputs.get(batch) if lower is not None else None
        record = lower is not None and (replayed is None or replayed[0] < lower.keep)
        with contextlib.ExitStack() as stack:
            records = {name: stack.enter_context(trace(m, keep_input=not outputs[name], keep_output=outputs[name]))
                       for name, m in modules.items()}
            stack.enter_context(stop_after(deepest))
            if replayed is not None:
                block, recorded = replayed
                stack.enter_context(replay_blocks(lower.blocks, block, lambda: recorded, tuple_output=lower.tuple_output))
            if record:
                below = stack.enter_context(trace(lower.blocks[lower.keep], keep_output=True))
            model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=cache is not None)
        if record and below.output is not None:
            lower.outputs[batch], lower.tuple_output = (lower.keep, below.output), below.tuple_output
        captured = {name: (rec.output if outputs[name] else rec.input) for name, rec in records.items()}
        yield chunk, captured, starts, key_idx


def answer_position_keys(model, adapter: MLPOutputAdapter, layers: list[int], pairs: list[tuple[list[int], list[int]]],
                         pad_id: int, batch_size: int = 32) -> list[dict[int, torch.Tensor]]:
    """Per (prompt ids, answer ids) pair: layer → keys (positions × m, fp32, CPU) at every position
    that predicts an answer token (the prompt's last token onwards, the answer's last token excluded)."""
    prompts = [EditPrompt(i, 0, list(p) + list(a), len(p) - 1, (0, len(p))) for i, (p, a) in enumerate(pairs)]
    modules = {layer: adapter.mlp_output(layer) for layer in layers}
    out: list[dict[int, torch.Tensor]] = []
    for chunk, captured, starts, key_idx in capture_prompts(model, modules, prompts, pad_id, batch_size=batch_size):
        for row, p in enumerate(chunk):
            first, last = int(key_idx[row]), int(starts[row]) + len(p.input_ids) - 1
            out.append({layer: captured[layer][row, first:max(first + 1, last)].float().cpu() for layer in layers})
    return out


def at_key(states: torch.Tensor, key_idx: torch.Tensor) -> torch.Tensor:
    """Each row's state at its key token (batch × dim)."""
    return states[torch.arange(states.shape[0], device=states.device), key_idx.to(states.device)]


def token_keys(model, adapter: MLPOutputAdapter, layer: int, prompts: list[EditPrompt], pad_id: int,
               batch_size: int = 32) -> list[torch.Tensor]:
    """All keys of each prompt (its unpadded length × m), in fp32 on the CPU."""
    out: list[torch.Tensor] = []
    for chunk, captured, starts, _ in capture_prompts(model, {layer: adapter.mlp_output(layer)}, prompts, pad_id,
                                                       batch_size=batch_size, shared_prefix=False):
        for row, p in enumerate(chunk):
            out.append(captured[layer][row, int(starts[row]):].float().cpu())
    return out


def request_keys(model, adapter: MLPOutputAdapter, layer: int, prompts: list[EditPrompt], num_requests: int,
                 pad_id: int, batch_size: int = 32) -> torch.Tensor:
    """Key of each request (m × N): ½ the plain prompt's key + ½ the mean over prefixed variants."""
    return request_keys_and_values(model, adapter, layer, None, prompts, num_requests, pad_id, batch_size)[0]


def request_keys_and_values(model, adapter: MLPOutputAdapter, layer: int, z_layer: int | None, prompts: list[EditPrompt],
                            num_requests: int, pad_id: int, batch_size: int = 32,
                            lower: LowerBlocks | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Keys of ``layer`` (m × N, as ``request_keys``) and, in the same pass, block ``z_layer``'s output
    at each request's key token in its plain prompt (d × N; ``None`` without ``z_layer``);
    ``lower``: see ``capture_prompts``."""
    keys, values = _collect(model, adapter, [layer], z_layer, prompts, num_requests, pad_id, batch_size, lower)
    return keys[layer], values


def request_keys_at(model, adapter: MLPOutputAdapter, layers: list[int], prompts: list[EditPrompt], num_requests: int,
                    pad_id: int, batch_size: int = 32) -> dict[int, torch.Tensor]:
    """Keys of several layers from one pass (layer → m × N, combined as ``request_keys``)."""
    return _collect(model, adapter, layers, None, prompts, num_requests, pad_id, batch_size, None)[0]


def _collect(model, adapter: MLPOutputAdapter, layers: list[int], z_layer: int | None, prompts: list[EditPrompt],
             num_requests: int, pad_id: int, batch_size: int,
             lower: LowerBlocks | None) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    """One pass over ``prompts``: per layer ½ the plain prompt's key + ½ the mean over prefixed
    variants of each request, and the plain prompt's block-``z_layer`` output.

    With ``z_layer`` the plain prompts run up to that block and the prefixed ones only up to the
    keys' layers (a separate pass each; the prefixed ones sorted by variant, so each batch shares
    its context prefix)."""
    modules: dict = {layer: adapter.mlp_output(layer) for layer in layers}
    plain = {layer: [None] * num_requests for layer in layers}
    prefixed = {layer: [[] for _ in range(num_requests)] for layer in layers}
    values = [None] * num_requests
    if z_layer is None:
        runs = [(prompts, modules)]
    else:
        others = sorted((p for p in prompts if p.variant != 0), key=lambda p: (p.variant, p.request_index))
        runs = [([p for p in prompts if p.variant == 0], dict(modules, z=adapter.block(z_layer))), (others, modules)]
    for chosen, run_modules in runs:
        if not chosen:
            continue
        for chunk, captured, _, key_idx in capture_prompts(model, run_modules, chosen, pad_id, output={"z"},
                                                           batch_size=batch_size, lower=lower):
            for layer in layers:
                keys = at_key(captured[layer], key_idx).float().cpu()
                for row, p in enumerate(chunk):
                    if p.variant == 0:
                        plain[layer][p.request_index] = keys[row]
                    else:
                        prefixed[layer][p.request_index].append(keys[row])
            if "z" in captured:
                z = at_key(captured["z"], key_idx).float().cpu()
                for row, p in enumerate(chunk):
                    values[p.request_index] = z[row]
    combined = {}
    for layer in layers:
        columns = [k if not extra else 0.5 * k + 0.5 * torch.stack(extra).mean(0)
                   for k, extra in zip(plain[layer], prefixed[layer])]
        combined[layer] = torch.stack(columns, dim=1)
    return combined, (torch.stack(values, dim=1) if z_layer is not None else None)


def choose_key_chars(model, tokenizer, adapter: MLPOutputAdapter, requests: list[ForgetRequest], mode: str,
                     first_layer: int, basis: torch.Tensor | None, described: list[bool] | None = None) -> list[int | None]:
    """Character end (inside the question) of each request's key token; ``None`` = last prompt token.
    ``described``: per request, whether it belongs to an entity group it names only by description
    (``ScopedRound.described``); with ``auto``, such a request is keyed at the question's end."""
    if mode not in KEY_POSITIONS:
        raise UniEraseError(f"unknown key position {mode!r} (choose from {', '.join(KEY_POSITIONS)})")
    ends: list[int | None] = []
    pending: list[int] = []
    for i, r in enumerate(requests):
        if mode in ("auto", "subject") and r.subject:
            ends.append(subject_char_end(r.question, r.subject))
        elif mode == "subject":
            raise UniEraseError(f"request {i + 1} has no 'subject' but --key-position subject was asked for")
        elif mode == "last":
            ends.append(None)
        elif mode == "question_end" or (mode == "auto" and described and described[i]):
            ends.append(len(r.question.rstrip()))
        elif mode == "entity" or (mode == "auto" and not r.subject):
            ends.append(entity_char_end(r.question))
        else:
            ends.append(None)
            pending.append(i)
    if pending:
        if basis is None:
            raise UniEraseError("key position 'distinct' needs the null-space basis of the preserved keys")
        for i in pending:
            ends[i] = _most_distinct_token(model, tokenizer, adapter, requests[i].question, first_layer, basis)
    return ends


def _most_distinct_token(model, tokenizer, adapter, question: str, layer: int, basis: torch.Tensor) -> int:
    """The question token whose key has the largest share ‖Ûᵀ k‖² / ‖k‖² in the free subspace.

    The first word is skipped (its token depends on what precedes the question).
    """
    ids, offsets, q_start = render_variants(tokenizer, question, num_prefixes=0)[0]
    keys = token_keys(model, adapter, layer, [EditPrompt(0, 0, ids, len(ids) - 1, (0, len(ids)))], tokenizer.pad_token_id)[0]
    u = basis.to(keys.device, torch.float32)
    best, best_score = None, -1.0
    first_word_end = q_start + (question.find(" ") if " " in question else len(question))
    for t, (s, e) in enumerate(offsets):
        if s < first_word_end or e > q_start + len(question) or e <= s:
            continue
        k = keys[t]
        score = float((u.T @ k).norm() ** 2 / k.norm().clamp(min=1e-12) ** 2)
        if score > best_score:
            best, best_score = e - q_start, score
    return best if best is not None else len(question)
