"""Revert data: every encoding gives the old tensor back bit for bit, and is smaller than it where it should be."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from unierase.record import deltas
from unierase.storage import UniEraseError


def _roundtrip(before, after):
    tensors, info = deltas.encode({"w": (before, after)})
    restored = deltas.decode("w", after, info["w"], tensors)
    assert restored.dtype == before.dtype and restored.shape == before.shape
    assert torch.equal(restored.view(torch.uint8) if restored.dtype == torch.uint8 else restored, before)
    assert deltas.tensor_digest(restored) == deltas.tensor_digest(before)
    return info["w"], sum(t.numel() * t.element_size() for t in tensors.values())


@pytest.mark.parametrize("scale", [1e-5, 1e-3, 1e-2])
def test_low_rank_update_is_exact_and_compact(scale):
    torch.manual_seed(0)
    before = torch.randn(96, 256) * 0.02
    after = before + (torch.randn(96, 6) @ torch.randn(6, 256)) * scale
    info, size = _roundtrip(before, after)
    assert info["kind"] == "low_rank" and info["rank"] == 6
    assert size < 0.6 * before.numel() * 4


def test_an_update_far_larger_than_the_weights_is_still_exact():
    torch.manual_seed(0)
    before = torch.randn(96, 256) * 0.02
    _roundtrip(before, before + (torch.randn(96, 6) @ torch.randn(6, 256)))  # its rounding hides the old bits: dense


def test_several_passes_of_low_rank_updates():
    torch.manual_seed(1)
    before = torch.randn(64, 128) * 0.05
    after = before.clone()
    for _ in range(5):  # each pass rounds on its own, as the edit's passes do
        after += (torch.randn(64, 2) @ torch.randn(2, 128)) * 1e-3
    info, _ = _roundtrip(before, after)
    assert info["kind"] == "low_rank"


def test_full_rank_change_is_stored_dense():
    torch.manual_seed(2)
    before = torch.randn(32, 48)
    info, size = _roundtrip(before, before + torch.randn(32, 48) * 1e-3)
    assert info["kind"] == "dense" and size == before.numel() * 4


def test_changed_rows_and_appended_rows():
    torch.manual_seed(3)
    before = torch.randn(100, 16)
    one_row = before.clone()
    one_row[7] += 1.0
    assert _roundtrip(before, one_row)[0]["kind"] == "rows"
    grown = torch.cat([before, torch.randn(1, 16)])
    info, size = _roundtrip(before, grown)
    assert info["kind"] == "rows_appended" and size == 0


def test_fp64_state_and_other_dtypes():
    torch.manual_seed(4)
    k = torch.randn(40, 10, dtype=torch.float64)
    _roundtrip(k @ k.T, k @ k.T + (lambda x: x @ x.T)(torch.randn(40, 3, dtype=torch.float64)))
    half = torch.randn(30, 20).to(torch.bfloat16)
    _roundtrip(half, (half.float() + torch.randn(30, 1) @ torch.randn(1, 20) * 0.01).to(torch.bfloat16))
    _roundtrip(torch.arange(12), torch.arange(12) * 2)


def test_decode_refuses_a_tensor_changed_since():
    before = torch.randn(20, 30)
    after = before + torch.randn(20, 1) @ torch.randn(1, 30)
    tensors, info = deltas.encode({"w": (before, after)})
    tampered = after.clone()
    tampered[0, 0] += 1.0
    with pytest.raises(UniEraseError, match="did not give back"):
        deltas.decode("w", tampered, info["w"], tensors)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), rank=st.integers(1, 5),
       log_scale=st.floats(-6, 1), log_size=st.floats(-3, 2), seed=st.integers(0, 2**16))
def test_any_update_round_trips(rows, cols, rank, log_scale, log_size, seed):
    g = torch.Generator().manual_seed(seed)
    before = torch.randn(rows, cols, generator=g) * 10 ** log_size
    update = torch.randn(rows, rank, generator=g) @ torch.randn(rank, cols, generator=g) * 10 ** log_scale
    _roundtrip(before, before + update)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scale", [1e-3, 0.1, 10.0])
def test_an_applied_update_is_undone_from_its_factors(dtype, scale):
    """The update as applied (after = round(before + u v), factors at the weight's precision): exact
    back, with a bit or a step count where it crossed powers of two and almost no other fix, even
    where it dwarfs the weights."""
    g = torch.Generator().manual_seed(0)
    before = (torch.randn(64, 96, generator=g) * 0.02).to(dtype)
    factor = torch.float32 if dtype == torch.float16 else dtype
    u = (torch.randn(64, 4, generator=g, dtype=torch.float64) * 0.02 * scale).to(factor)
    v = (torch.randn(4, 96, generator=g, dtype=torch.float64) / 2).to(factor)
    after = (before.double() + u.double() @ v.double()).to(dtype)
    tensors, info = deltas.encode({"w": (before, after)}, {"w": (u, v)})
    assert info["w"]["kind"] == "low_rank" and info["w"]["rank"] == 4
    assert torch.equal(deltas.decode("w", after, info["w"], tensors), before)
    fixed = tensors["w::exact_index"].numel() + (tensors["w::fix_index"].numel() if "w::fix_index" in tensors
                                                  else int((tensors["w::ulps"] != 0).sum()))
    assert fixed <= 0.05 * before.numel()  # (steps of more than 127 units are stored exactly)
    tampered = after.clone()
    tampered[0, 0] += 1.0
    with pytest.raises(UniEraseError, match="did not give back"):
        deltas.decode("w", tampered, info["w"], tensors)
