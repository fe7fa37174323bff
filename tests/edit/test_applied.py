"""edit/applied.py: the passes' updates are applied from the round's starting weights with one
rounding, and their factors make the revert data a few fixes instead of one per weight."""

import pytest
import torch

from tiny_models import build_model, build_tokenizer
from unierase.edit.applied import AppliedUpdates
from unierase.edit.solve import LowRank
from unierase.models.adapters import find_mlp_output
from unierase.record import deltas


def _passes(adapter, layer, count, scale, seed=0):
    """``count`` random rank-3 updates of ``layer``'s weight, about ``scale`` of its entries' size."""
    g = torch.Generator().manual_seed(seed)
    d, m = adapter.weight(layer).shape
    size = float(adapter.weight(layer).detach().float().abs().mean())
    return [LowRank(torch.randn(d, 3, generator=g, dtype=torch.float64) * size * scale,
                    torch.randn(m, 3, generator=g, dtype=torch.float64) / 3) for _ in range(count)]


@pytest.mark.parametrize("arch,dtype", [("llama", torch.bfloat16), ("llama", torch.float32), ("gpt2", torch.bfloat16),
                                        ("qwen2", torch.float16)])
def test_passes_are_applied_once_rounded_and_recorded_as_applied(arch, dtype):
    tok = build_tokenizer()
    model = build_model(arch, len(tok)).to(dtype)
    adapter = find_mlp_output(model)
    name = f"{adapter.module_name(1)}.weight"
    before = model.state_dict()[name].clone()
    updates = AppliedUpdates(adapter)
    passes = _passes(adapter, 1, 3, scale=0.05)
    for update in passes:
        updates.apply(1, update)
    after = model.state_dict()[name]
    factors = updates.recorded()
    assert list(factors) == [name]
    u, v = factors[name]
    assert u.shape[1] == v.shape[0] == 9 and (u.shape[0], v.shape[1]) == tuple(after.shape)
    # the weight is the recorded change added once, rounded once; the recorded change is the solved one
    # to the weight's own precision
    recorded = u.to(torch.float64) @ v.to(torch.float64)
    one_rounding = (before.to(torch.float64) + recorded).to(dtype)
    assert (one_rounding != after).float().mean() < 0.01
    solved = sum(p.dense() for p in passes)
    solved = solved.T if adapter.transposed else solved
    assert float((recorded - solved).abs().max()) <= 2 * torch.finfo(dtype).eps * float(solved.abs().max())
    # the revert data from the applied factors: exact, and the fixes are a small share of the entries
    tensors, info = deltas.encode({name: (before, after)}, factors)
    assert info[name]["kind"] == "low_rank" and info[name]["rank"] == 9
    assert torch.equal(deltas.decode(name, after, info[name], tensors), before)
    fixes = tensors.get(f"{name}::fix_index")
    assert fixes is not None and fixes.numel() <= 0.05 * before.numel(), "dense fixes: the factors are not the change"


def test_factors_that_do_not_explain_the_change_still_revert_exactly():
    """Something else changed the weight too: the fixes make up for it (or the tensor is stored whole)."""
    tok = build_tokenizer()
    model = build_model("llama", len(tok)).to(torch.bfloat16)
    adapter = find_mlp_output(model)
    name = f"{adapter.module_name(0)}.weight"
    before = model.state_dict()[name].clone()
    updates = AppliedUpdates(adapter)
    updates.apply(0, _passes(adapter, 0, 1, scale=0.1)[0])
    with torch.no_grad():
        adapter.mlp_output(0).weight.mul_(1.5)
    after = model.state_dict()[name]
    tensors, info = deltas.encode({name: (before, after)}, updates.recorded())
    assert torch.equal(deltas.decode(name, after, info[name], tensors), before)
