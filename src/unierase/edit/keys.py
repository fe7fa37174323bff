"""Edit keys: the input of a layer's MLP output projection at each request's key token."""

from __future__ import annotations

import torch

import contextlib
from typing import Iterator


from ..models.adapters import MLPOutputAdapter
from ..models.tracing import stop_after, trace
from .prompts import EditPrompt, left_pad


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding (so padded and unpadded prompts give the same states)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def capture_prompts(model, modules: dict, prompts: list[EditPrompt], pad_id: int, *, output: bool = False,
                    batch_size: int = 32) -> Iterator[tuple[list[EditPrompt], dict, int, torch.Tensor]]:
    """Run left-padded batches of prompts, recording each module's input (or ``output``).

    Yields ``(chunk, captured, width, key_index)``: ``captured[name]`` is batch × width × dim and
    ``key_index`` each prompt's key token in the padded row. The forward pass stops after the
    deepest module, so layers above it are never computed.
    """
    device = model.get_input_embeddings().weight.device
    order = {id(m): i for i, m in enumerate(model.modules())}
    deepest = max(modules.values(), key=lambda m: order[id(m)])
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start: start + batch_size]
        ids, mask, key_idx = left_pad(chunk, pad_id, device)
        with contextlib.ExitStack() as stack:
            records = {name: stack.enter_context(trace(m, keep_input=not output, keep_output=output))
                       for name, m in modules.items()}
            stack.enter_context(stop_after(deepest))
            model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
        captured = {name: (rec.output if output else rec.input) for name, rec in records.items()}
        yield chunk, captured, ids.shape[1], key_idx


def at_key(states: torch.Tensor, key_idx: torch.Tensor) -> torch.Tensor:
    """Each row's state at its key token (batch × dim)."""
    return states[torch.arange(states.shape[0], device=states.device), key_idx.to(states.device)]


def token_keys(model, adapter: MLPOutputAdapter, layer: int, prompts: list[EditPrompt], pad_id: int,
               batch_size: int = 32) -> list[torch.Tensor]:
    """All keys of each prompt (its unpadded length × m), in fp32 on the CPU."""
    out: list[torch.Tensor] = []
    for chunk, captured, width, _ in capture_prompts(model, {layer: adapter.mlp_output(layer)}, prompts, pad_id,
                                                      batch_size=batch_size):
        for row, p in enumerate(chunk):
            out.append(captured[layer][row, width - len(p.input_ids):].float().cpu())
    return out


def request_keys(model, adapter: MLPOutputAdapter, layer: int, prompts: list[EditPrompt], num_requests: int,
                 pad_id: int, batch_size: int = 32) -> torch.Tensor:
    """Key of each request (m × N): ½ the plain prompt's key + ½ the mean over prefixed variants."""
    plain = [None] * num_requests
    prefixed: list[list[torch.Tensor]] = [[] for _ in range(num_requests)]
    for chunk, captured, _, key_idx in capture_prompts(model, {layer: adapter.mlp_output(layer)}, prompts, pad_id,
                                                        batch_size=batch_size):
        keys = at_key(captured[layer], key_idx).float().cpu()
        for row, p in enumerate(chunk):
            if p.variant == 0:
                plain[p.request_index] = keys[row]
            else:
                prefixed[p.request_index].append(keys[row])
    columns = []
    for r in range(num_requests):
        k = plain[r] if not prefixed[r] else 0.5 * plain[r] + 0.5 * torch.stack(prefixed[r]).mean(0)
        columns.append(k)
    return torch.stack(columns, dim=1)
