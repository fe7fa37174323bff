"""The closed form: edited keys reach their targets; keys inside the preserved subspace leave the
layer's output unchanged."""

import torch

from unierase.edit.solve import alphaedit_update, alphaedit_update_in_basis, memit_update
from unierase.edit.stats import null_space_basis, null_space_projector


def _setup(seed=0, m=48, d=16, rank=30, n_edit=5):
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))[0]
    preserved_basis = basis[:, :rank]
    preserved_keys = preserved_basis @ torch.randn(rank, 500, generator=g, dtype=torch.float64)
    cov = preserved_keys @ preserved_keys.T / 500
    edit_keys = torch.randn(m, n_edit, generator=g, dtype=torch.float64)
    residuals = torch.randn(d, n_edit, generator=g, dtype=torch.float64)
    return preserved_basis, preserved_keys, cov, edit_keys, residuals


def test_projector_spans_the_unused_directions():
    preserved_basis, _, cov, _, _ = _setup()
    p, dim = null_space_projector(cov, relative_threshold=1e-8)
    assert dim == 48 - 30
    assert torch.allclose(p @ preserved_basis, torch.zeros_like(preserved_basis), atol=1e-10)
    assert torch.allclose(p @ p, p, atol=1e-10)


def test_alphaedit_reaches_targets_and_preserves_subspace():
    preserved_basis, preserved_keys, cov, keys, residuals = _setup()
    p, _ = null_space_projector(cov, relative_threshold=1e-8)
    for ridge in (1.0, 1e-2):
        delta = alphaedit_update(keys, residuals, p, None, ridge=ridge)
        # keys in the preserved subspace: output unchanged to round-off, whatever the ridge
        assert (delta @ preserved_keys).abs().max() < 1e-10 * residuals.abs().max() * preserved_keys.abs().max()
    # with a small ridge the edited keys reach their targets (their free components carry the residual)
    delta = alphaedit_update(keys, residuals, p, None, ridge=1e-7)
    torch.testing.assert_close(delta @ keys, residuals, atol=1e-5, rtol=1e-5)


def test_alphaedit_respects_previous_edits():
    _, _, cov, keys, residuals = _setup()
    p, _ = null_space_projector(cov, relative_threshold=1e-8)
    first = alphaedit_update(keys[:, :3], residuals[:, :3], p, None, ridge=1e-7)
    previous = keys[:, :3] @ keys[:, :3].T
    second = alphaedit_update(keys[:, 3:], residuals[:, 3:], p, previous, ridge=1e-6)
    # the second round barely moves the outputs of the first round's keys, unlike an unconstrained round
    unconstrained = alphaedit_update(keys[:, 3:], residuals[:, 3:], p, None, ridge=1e-6)
    assert (second @ keys[:, :3]).norm() < 0.1 * (unconstrained @ keys[:, :3]).norm()
    # ... while still (mostly) writing the new residuals (measured on the already-updated layer)
    assert ((second @ keys[:, 3:]) - residuals[:, 3:]).norm() < 0.2 * residuals[:, 3:].norm()
    assert first.abs().max() > 0


def test_the_update_solved_in_the_free_subspace_equals_the_full_closed_form():
    """ΔW = Y Ûᵀ from the r × r system is the m × m closed form with P = Û Ûᵀ, with and without
    earlier edits; it is exactly zero on the preserved subspace."""
    preserved_basis, preserved_keys, cov, keys, residuals = _setup()
    basis = null_space_basis(cov, relative_threshold=1e-8)
    p, dim = null_space_projector(cov, relative_threshold=1e-8)
    assert basis.shape == (48, dim)
    previous = keys[:, :3] @ keys[:, :3].T
    for earlier in (None, previous):
        for ridge in (1.0, 1e-3):
            full = alphaedit_update(keys[:, 3:], residuals[:, 3:], p, earlier, ridge=ridge)
            projected = None if earlier is None else basis.T @ earlier @ basis
            fast = alphaedit_update_in_basis(keys[:, 3:], residuals[:, 3:], basis, projected, ridge=ridge)
            torch.testing.assert_close(fast, full, atol=1e-9, rtol=1e-7)
            assert (fast @ preserved_basis).abs().max() < 1e-12


def test_memit_solves_the_regularised_least_squares():
    _, _, cov, keys, residuals = _setup()
    delta = memit_update(keys, residuals, cov, weight=1e-9)
    torch.testing.assert_close(delta @ keys, residuals, atol=1e-5, rtol=1e-5)
    # gradient of ||ΔK − R||² + λ' tr(Δ C Δᵀ) vanishes at the solution
    lam = 0.5
    delta = memit_update(keys, residuals, cov, weight=lam)
    grad = (delta @ keys - residuals) @ keys.T + lam * delta @ cov
    assert grad.abs().max() < 1e-8


def test_memit_with_earlier_edits_keeps_their_outputs():
    """With the sequential state K_p K_pᵀ in the system, an earlier edit's keys barely move."""
    _, _, cov, keys, residuals = _setup()
    earlier = keys[:, :3]
    free = memit_update(keys[:, 3:], residuals[:, 3:], cov, weight=1e-3)
    kept = memit_update(keys[:, 3:], residuals[:, 3:], cov, weight=1e-3, previous=earlier @ earlier.T)
    assert (kept @ earlier).norm() < 0.05 * (free @ earlier).norm()
    assert ((kept @ keys[:, 3:]) - residuals[:, 3:]).norm() < 0.2 * residuals[:, 3:].norm()
