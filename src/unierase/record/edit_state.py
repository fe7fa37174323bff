"""The sequential edit state saved beside an edited checkpoint.

``unierase_state.safetensors`` holds, per edited layer, K_p K_pᵀ: the summed outer products of all
keys edited so far (and of the rounds' softly preserved keys,
weighted). A later round adds it to its system so it does not undo earlier edits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..storage import UniEraseError

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

    def validate(self, layers: list[int] | None, key_dim: int | None, *, source: object = "the edit state") -> None:
        """Refuse a state that cannot be the one of this model: other layers, other shapes, a
        dtype other than fp64, or any NaN / infinity (it would turn the edited weights into NaN)."""
        for layer, value in self.previous_keys.items():
            where = f"{source}: layer {layer}"
            if layers is not None and layer not in layers:
                raise UniEraseError(f"{where} is not one of the edited layers {layers}")
            if value.dtype != torch.float64 or value.dim() != 2 or value.shape[0] != value.shape[1]:
                raise UniEraseError(f"{where}: expected a square fp64 matrix, got {str(value.dtype)} {tuple(value.shape)}")
            if key_dim is not None and value.shape[0] != key_dim:
                raise UniEraseError(f"{where}: {value.shape[0]} × {value.shape[1]}, but the model's keys have {key_dim} dimensions")
            if not torch.isfinite(value).all():
                raise UniEraseError(f"{where} holds NaN or infinite values; the state is corrupt")

    @classmethod
    def load(cls, folder: str | Path) -> "EditState":
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            return cls()
        try:
            data = load_file(str(path))
        except Exception as err:  # safetensors raises its own error type for truncated or foreign files
            raise UniEraseError(f"{path}: unreadable edit state ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
        layers = {}
        for name, value in data.items():
            match = re.fullmatch(r"layer(\d+)\.previous_keys", name)
            if match is None:
                raise UniEraseError(f"{path}: unexpected tensor {name!r} in the edit state")
            layers[int(match.group(1))] = value
        if not layers:
            raise UniEraseError(f"{path}: the edit state is empty")
        return cls(layers)
