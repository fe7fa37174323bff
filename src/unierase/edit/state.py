"""The sequential edit state saved beside an edited checkpoint.

``unierase_state.safetensors`` holds, per edited layer, K_p K_pᵀ: the summed outer products of all
keys edited so far (and, with ``EditConfig.keep_soft_keys``, of the rounds' softly preserved keys,
weighted). A later round adds it to its system so it does not undo earlier edits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "unierase_state.safetensors"


@dataclass
class EditState:
    previous_keys: dict[int, torch.Tensor] = field(default_factory=dict)
    """Layer → Σ k kᵀ (m × m, fp64) over every key edited (or softly preserved) in earlier rounds."""
    _projected: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)
    """Layer → (Û, Ûᵀ Σ k kᵀ Û) for the null-space basis last asked for (not saved)."""

    def get(self, layer: int) -> torch.Tensor | None:
        return self.previous_keys.get(layer)

    def projected(self, layer: int, basis: torch.Tensor) -> torch.Tensor | None:
        """Ûᵀ (Σ k kᵀ) Û (r × r, fp64) for ``basis`` Û (m × r): computed once per basis, then kept up
        to date by ``add`` with rank-N updates instead of m × m × r products every pass."""
        if layer not in self.previous_keys:
            return None
        cached = self._projected.get(layer)
        if cached is None or cached[0] is not basis:
            u = basis.to(torch.float64)
            cached = (basis, u.T @ self.previous_keys[layer] @ u)
            self._projected[layer] = cached
        return cached[1]

    def add(self, layer: int, keys: torch.Tensor) -> None:
        k = keys.to(torch.float64)
        outer = k @ k.T
        self.previous_keys[layer] = outer if layer not in self.previous_keys else self.previous_keys[layer] + outer
        if layer in self._projected:
            basis, projected = self._projected[layer]
            k_u = basis.to(torch.float64).T @ k
            self._projected[layer] = (basis, projected + k_u @ k_u.T)

    def save(self, folder: str | Path) -> None:
        tensors = {f"layer{l}.previous_keys": v.contiguous() for l, v in self.previous_keys.items()}
        if tensors:
            save_file(tensors, str(Path(folder) / STATE_FILE))

    @classmethod
    def load(cls, folder: str | Path) -> "EditState":
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            return cls()
        data = load_file(str(path))
        return cls({int(name.split(".")[0][len("layer"):]): value for name, value in data.items()})
