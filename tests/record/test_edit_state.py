"""The sequential edit state."""

import torch

from unierase.record.edit_state import EditState


def test_the_projected_state_follows_added_keys():
    """``projected`` equals Ûᵀ (Σ k kᵀ) Û after keys are added (rank-N updates of the cached matrix)."""
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(12, 5, generator=g, dtype=torch.float64))[0]
    state = EditState()
    assert state.projected(3, basis) is None
    first, second = torch.randn(12, 4, generator=g), torch.randn(12, 2, generator=g)
    state.add(3, first)
    before = state.projected(3, basis).clone()
    state.add(3, second)
    for got, keys in ((before, first), (state.projected(3, basis), torch.cat([first, second], 1))):
        k = keys.double()
        torch.testing.assert_close(got, basis.T @ (k @ k.T) @ basis)
