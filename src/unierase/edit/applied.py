"""The round's updates to the edited weights: applied from the weights at the round's start, and
kept as the factors ``revert`` needs.

Each pass's ΔW comes as rank-N factors (``solve.LowRank``). A weight is set to round(W₀ + Σ ΔW):
one rounding to its dtype per round, however many passes. The factors are rounded first to what
is recorded (``recorded_dtype``), so the update applied is the update recorded, and round(W − Σ ΔW)
gives W₀ back except where the sum crossed powers of two, whose lost bits ``record.deltas`` keeps.
The revert data of a round is then the factors (N (d + m) numbers per pass and layer) plus a few
hundredths of a byte per entry, where adding each pass in the weight's own dtype left rounding
residue in nearly every entry.
"""

from __future__ import annotations

import torch

from ..models.adapters import MLPOutputAdapter
from .solve import LowRank
from .stats import linalg_device


def recorded_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """The precision of a weight's recorded factors: the weight's own (rounding them perturbs ΔW by
    the same relative amount as storing the edited weight perturbs W, and ΔW is smaller than W),
    but fp32 for fp16 weights, whose range is too narrow for the factors."""
    return torch.float32 if weight_dtype == torch.float16 else weight_dtype


class AppliedUpdates:
    """Applies the passes' updates to the MLP output weights of ``adapter`` and keeps their factors."""

    def __init__(self, adapter: MLPOutputAdapter):
        self.adapter = adapter
        self._start: dict[int, torch.Tensor] = {}
        """Layer → its weight before the first update (its dtype, its device)."""
        self._factors: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        """Layer → the passes' (u, v), oriented as the stored tensor: Σ u vᵀ is its change."""

    def apply(self, layer: int, update: LowRank) -> None:
        param = self.adapter.mlp_output(layer).weight
        dtype, where = recorded_dtype(param.dtype), linalg_device(param.device)
        left, right = update.left.to(where, dtype), update.right.to(where, dtype)
        u, v = (right, left) if self.adapter.transposed else (left, right)
        start = self._start.setdefault(layer, param.detach().clone())
        self._factors.setdefault(layer, []).append((u, v))
        us, vs = self._stacked(layer)
        changed = start.to(where, torch.float64) + us.to(torch.float64) @ vs.to(torch.float64).T
        with torch.no_grad():
            param.copy_(changed.to(param.dtype))

    def _stacked(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = self._factors[layer]
        return torch.cat([u for u, _ in pairs], dim=1), torch.cat([v for _, v in pairs], dim=1)

    def recorded(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """State-dict name → (u, v) on the CPU with (after − before) = u @ v before rounding: the
        factors ``record.deltas.encode`` stores in place of an SVD of the change."""
        out = {}
        for layer in self._factors:
            us, vs = self._stacked(layer)
            out[f"{self.adapter.module_name(layer)}.weight"] = (us.cpu().contiguous(), vs.T.cpu().contiguous())
        return out
