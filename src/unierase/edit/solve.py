"""The closed-form multi-layer update (AlphaEdit, with plain MEMIT as an option), solvers by name.

Shapes: K is m × N (keys as columns), R is d × N (residuals), P and the covariances are m × m;
the returned ΔW is d × m with output = W k (the solvers return it as rank-N factors). Solved in fp64
without forming an inverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


def alphaedit_update(keys: torch.Tensor, residuals: torch.Tensor, projector: torch.Tensor,
                     previous: torch.Tensor | None, ridge: float) -> torch.Tensor:
    """ΔW = R Kᵀ P (K Kᵀ P + K_p K_pᵀ P + λ I)⁻¹.

    Any key k with P k = 0 (inside the preserved subspace) gives ΔW k = 0 exactly.
    """
    p = projector.to(torch.float64)
    k = keys.to(p.device, torch.float64)
    r = residuals.to(p.device, torch.float64)
    m = k.shape[0]
    system = k @ k.T @ p + ridge * torch.eye(m, dtype=torch.float64, device=p.device)
    if previous is not None:
        system = system + previous.to(p.device, torch.float64) @ p
    rhs = r @ k.T @ p  # ΔW · system = rhs  ⇔  systemᵀ ΔWᵀ = rhsᵀ
    return torch.linalg.solve(system.T, rhs.T).T


def alphaedit_update_in_basis(keys: torch.Tensor, residuals: torch.Tensor, basis: torch.Tensor,
                              previous_in_basis: torch.Tensor | None, ridge: float) -> torch.Tensor:
    """``alphaedit_update`` with P = Û Ûᵀ given by its basis Û (m × r), solved in the r-dimensional
    free subspace: ΔW = Y Ûᵀ with Y = R Kᵀ Û (Ûᵀ K Kᵀ Û + Ûᵀ K_p K_pᵀ Û + λ I)⁻¹.

    The same update (substitute ΔW = Y Ûᵀ into ΔW (A P + λ I) = R Kᵀ P), at O(m r N + r³) instead
    of O(m³). ``previous_in_basis`` is Ûᵀ K_p K_pᵀ Û (r × r; ``EditState.projected`` keeps it).
    """
    return alphaedit_factors_in_basis(keys, residuals, basis, previous_in_basis, ridge).dense()


def alphaedit_factors_in_basis(keys: torch.Tensor, residuals: torch.Tensor, basis: torch.Tensor,
                               previous_in_basis: torch.Tensor | None, ridge: float) -> "LowRank":
    """``alphaedit_update_in_basis`` as its rank-N factors: ΔW = R (Û S⁻¹ Ûᵀ K)ᵀ, S the r × r
    system (symmetric), so ΔW = R Gᵀ with G = Û S⁻¹ Ûᵀ K (m × N)."""
    u = basis.to(torch.float64)  # on the edited weight's device (``stats.linalg_device``): so is the solve
    k = u.T @ keys.to(u.device, torch.float64)  # r × N
    system = k @ k.T + ridge * torch.eye(u.shape[1], dtype=torch.float64, device=u.device)
    if previous_in_basis is not None:
        system = system + previous_in_basis.to(u.device, torch.float64)
    return LowRank(residuals.to(u.device, torch.float64), u @ torch.linalg.solve(system, k))


def memit_update(keys: torch.Tensor, residuals: torch.Tensor, covariance: torch.Tensor, weight: float,
                 previous: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW = R Kᵀ (λ' C₀ + K_p K_pᵀ + K Kᵀ)⁻¹ (MEMIT; no hard null-space constraint).

    The least-squares update that changes the outputs of preserved keys (distributed as C₀) and of
    earlier edits' keys (K_p K_pᵀ, the sequential state) as little as possible while writing R:
    a soft, variance-weighted version of the null-space constraint.
    """
    return memit_factors(keys, residuals, covariance, weight, previous).dense()


def memit_factors(keys: torch.Tensor, residuals: torch.Tensor, covariance: torch.Tensor, weight: float,
                  previous: torch.Tensor | None = None) -> "LowRank":
    """``memit_update`` as its rank-N factors: ΔW = R (S⁻¹ K)ᵀ, the system S being symmetric."""
    c = covariance.to(torch.float64)  # on the edited weight's device: so is the solve
    k = keys.to(c.device, torch.float64)
    system = weight * c + k @ k.T
    if previous is not None:
        system = system + previous.to(c.device, torch.float64)
    return LowRank(residuals.to(c.device, torch.float64), torch.linalg.solve(system, k))


@dataclass(frozen=True)
class LowRank:
    """An update ΔW = left · rightᵀ (d × m) of rank at most N, kept as its factors: applying it and
    recording it for ``revert`` then cost N (d + m) numbers instead of d × m."""

    left: torch.Tensor
    """d × N: what the update writes for each key (the residuals)."""
    right: torch.Tensor
    """m × N: the directions it reads them from."""

    def dense(self) -> torch.Tensor:
        return self.left @ self.right.T

    def norm(self) -> float:
        """‖left · rightᵀ‖_F without forming it: tr((leftᵀ left)(rightᵀ right))^½."""
        return float((self.left.T @ self.left * (self.right.T @ self.right)).sum().clamp(min=0).sqrt())


@dataclass(frozen=True)
class Solver:
    """One closed form the edit can use, registered by name in ``SOLVERS`` (``EditConfig.solver``)."""

    name: str
    needs_null_space: bool
    """Whether it works in the null space of C₀ (the bases are computed, and the soft constraint is
    projected into them)."""
    update: Callable[..., LowRank]
    """(keys, residuals, *, layer, config, preserved, soft) → ΔW of ``layer`` (as factors); ``preserved``: the
    ``preserved.PreservedKeys`` (C₀, Û, the sequential state); ``soft``: the round's softly
    preserved Σ k kᵀ in the solver's coordinates (or ``None``)."""


def alphaedit_terms(keys, *, layer, config, preserved):
    """What AlphaEdit solves with at ``layer``: (Û, Ûᵀ K_p K_pᵀ Û of the sequential state or None,
    the ridge λ for these keys)."""
    basis = preserved.basis(layer)
    state = preserved.state.projected(layer, basis)  # kept up to date across passes
    return basis, state, config.ridge * float(keys.pow(2).sum(0).mean())


def summed(*grams):
    """The sum of the preserved Gram terms that are not None (None when all are)."""
    present = [g for g in grams if g is not None]
    return sum(present[1:], present[0]) if present else None


def _alphaedit(keys, residuals, *, layer, config, preserved, soft):
    basis, state, ridge = alphaedit_terms(keys, layer=layer, config=config, preserved=preserved)
    return alphaedit_factors_in_basis(keys, residuals, basis, summed(state, soft), ridge)


def _memit(keys, residuals, *, layer, config, preserved, soft):
    kept = preserved.state.get(layer)
    if soft is not None:
        kept = soft if kept is None else kept.double().to(soft.device) + soft
    return memit_factors(keys, residuals, preserved.covariance(layer), config.memit_weight, kept)


SOLVERS: dict[str, Solver] = {s.name: s for s in (Solver("alphaedit", True, _alphaedit), Solver("memit", False, _memit))}
