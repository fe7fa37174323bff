"""Edit keys: the input of a layer's MLP output projection at each request's key token."""

from __future__ import annotations

import torch

from ..models.adapters import MLPOutputAdapter
from ..models.tracing import stop_after, trace
from .prompts import EditPrompt, left_pad


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding (so padded and unpadded prompts give the same states)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def token_keys(model, adapter: MLPOutputAdapter, layer: int, prompts: list[EditPrompt], pad_id: int,
               batch_size: int = 32) -> list[torch.Tensor]:
    """All keys of each prompt (its unpadded length × m), in fp32 on the CPU."""
    device = model.get_input_embeddings().weight.device
    out: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start: start + batch_size]
        ids, mask, _ = left_pad(chunk, pad_id, device)
        with trace(adapter.mlp_output(layer), keep_input=True) as rec, stop_after(adapter.mlp_output(layer)):
            model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
        for row, p in enumerate(chunk):
            out.append(rec.input[row, ids.shape[1] - len(p.input_ids):].float().cpu())
    return out


@torch.no_grad()
def request_keys(model, adapter: MLPOutputAdapter, layer: int, prompts: list[EditPrompt], num_requests: int,
                 pad_id: int, batch_size: int = 32) -> torch.Tensor:
    """Key of each request (m × N): ½ the plain prompt's key + ½ the mean over prefixed variants."""
    device = model.get_input_embeddings().weight.device
    plain = [None] * num_requests
    prefixed: list[list[torch.Tensor]] = [[] for _ in range(num_requests)]
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start: start + batch_size]
        ids, mask, key_idx = left_pad(chunk, pad_id, device)
        with trace(adapter.mlp_output(layer), keep_input=True) as rec, stop_after(adapter.mlp_output(layer)):
            model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
        keys = rec.input[torch.arange(len(chunk), device=rec.input.device), key_idx.to(rec.input.device)].float().cpu()
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
