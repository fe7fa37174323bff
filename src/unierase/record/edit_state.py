"""The sequential edit state saved beside an edited checkpoint.

A later round adds Σ k kᵀ over every key edited so far (and over the rounds' softly preserved keys,
weighted) to its system so it does not undo earlier edits. ``unierase_state.safetensors`` holds it
per edited layer in whichever form is smaller, so that its size follows what was erased:

- ``layer<l>.key_rows``: the keys themselves, one per row (n × m), while n ≤ m, in the precision
  of the model's activations: fp32, or its own 16-bit dtype for a 16-bit model (an average of its
  activations is then off by half a unit in their last place, as each activation already is). A
  state written in fp64 or fp32 by an earlier round stays in its dtype. A round appends rows, so
  its revert data is a row count (``deltas`` "rows_appended"), not an m × m matrix.
- ``layer<l>.previous_keys``: the sum K Kᵀ (m × m, fp64) once the keys outnumber the dimensions
  (a small model after a round or two; an 8B model's m = 14,336 takes thousands of keys).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..storage import UniEraseError

STATE_FILE = "unierase_state.safetensors"
ROW_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def row_dtype_for(weight_dtype: torch.dtype) -> torch.dtype:
    """Key rows of a 16-bit model in its own dtype (its keys are its 16-bit activations, averaged),
    else fp32."""
    return weight_dtype if torch.finfo(weight_dtype).bits <= 16 else torch.float32


@dataclass
class EditState:
    previous_keys: dict[int, torch.Tensor] = field(default_factory=dict)
    """Layer → Σ k kᵀ (m × m, fp64), for the layers whose keys outnumber their dimensions."""
    key_rows: dict[int, torch.Tensor] = field(default_factory=dict)
    """Layer → the keys, one per row (n × m), for the other layers; Σ k kᵀ = Rᵀ R (in fp64)."""
    row_dtype: torch.dtype = torch.float32
    """The dtype new key rows are stored in (``row_dtype_for``); rows already there keep theirs."""
    _projected: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)
    """Layer → (Û, Ûᵀ Σ k kᵀ Û) for the null-space basis last asked for (not saved)."""

    def __bool__(self) -> bool:
        return bool(self.previous_keys or self.key_rows)

    @property
    def layers(self) -> list[int]:
        return sorted(set(self.previous_keys) | set(self.key_rows))

    def get(self, layer: int) -> torch.Tensor | None:
        """Σ k kᵀ (m × m, fp64) of ``layer``, or ``None`` where nothing was edited."""
        if layer in self.key_rows:
            rows = self.key_rows[layer].to(torch.float64)
            return rows.T @ rows
        return self.previous_keys.get(layer)

    def projected(self, layer: int, basis: torch.Tensor) -> torch.Tensor | None:
        """Ûᵀ (Σ k kᵀ) Û (r × r, fp64) for ``basis`` Û (m × r): computed once per basis, then kept up
        to date by ``add`` with rank-N updates instead of m × m × r products every pass."""
        if layer not in self.previous_keys and layer not in self.key_rows:
            return None
        cached = self._projected.get(layer)
        if cached is None or cached[0] is not basis:  # on the basis' device (the edited weight's)
            u = basis.to(torch.float64)
            if layer in self.key_rows:
                in_basis = self.key_rows[layer].to(u.device, torch.float64) @ u
                cached = (basis, in_basis.T @ in_basis)
            else:
                cached = (basis, u.T @ self.previous_keys[layer].to(u.device) @ u)
            self._projected[layer] = cached
        return cached[1]

    def add(self, layer: int, keys: torch.Tensor) -> None:
        """Add the keys ``keys`` (m × n, one per column) of ``layer`` (kept on the host, saved with the checkpoint)."""
        k = keys.to("cpu", torch.float64)
        dim = k.shape[0]
        if layer in self.previous_keys:
            self.previous_keys[layer] = self.previous_keys[layer] + k @ k.T
        else:
            new = keys.to("cpu", self.row_dtype).T  # the activations' precision (a state read from an
            old = self.key_rows.get(layer)          # earlier round stays in its dtype, bit for bit)
            rows = new.contiguous() if old is None else torch.cat([old, new.to(old.dtype)])
            k = rows[rows.shape[0] - new.shape[0]:].T.to(torch.float64)  # the keys as kept, for the projection
            if rows.shape[0] <= dim:
                self.key_rows[layer] = rows
            else:  # more keys than dimensions: the m × m sum is the smaller form from now on
                self.key_rows.pop(layer, None)
                rows = rows.to(torch.float64)
                self.previous_keys[layer] = rows.T @ rows
        if layer in self._projected:
            basis, projected = self._projected[layer]
            k_u = basis.to(torch.float64).T @ k.to(basis.device)
            self._projected[layer] = (basis, projected + k_u @ k_u.T)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state as named tensors, ``state.layer<l>`` (Σ k kᵀ) or ``state.layer<l>.rows`` (the keys):
        what a round's revert data records and ``from_tensors`` reads back."""
        return {**{f"state.layer{l}": v for l, v in self.previous_keys.items()},
                **{f"state.layer{l}.rows": v for l, v in self.key_rows.items()}}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "EditState":
        state = cls()
        for name, value in tensors.items():
            match = re.fullmatch(r"state\.layer(\d+)(\.rows)?", name)
            if match is None:
                raise UniEraseError(f"unexpected edit-state tensor {name!r}")
            (state.key_rows if match.group(2) else state.previous_keys)[int(match.group(1))] = value
        return state

    def save(self, folder: str | Path) -> None:
        tensors = {**{f"layer{l}.previous_keys": v.contiguous() for l, v in self.previous_keys.items()},
                   **{f"layer{l}.key_rows": v.contiguous() for l, v in self.key_rows.items()}}
        if tensors:
            save_file(tensors, str(Path(folder) / STATE_FILE))

    def validate(self, layers: list[int] | None, key_dim: int | None, *, source: object = "the edit state") -> None:
        """Refuse a state that cannot be the one of this model: other layers, other shapes, a
        dtype other than fp64, or any NaN / infinity (it would turn the edited weights into NaN)."""
        both = set(self.previous_keys) & set(self.key_rows)
        if both:
            raise UniEraseError(f"{source}: layer {min(both)} is stored twice (as a sum and as key rows)")
        for form, values in (("sum", self.previous_keys), ("rows", self.key_rows)):
            for layer, value in values.items():
                where = f"{source}: layer {layer}"
                if layers is not None and layer not in layers:
                    raise UniEraseError(f"{where} is not one of the edited layers {layers}")
                square = value.dim() == 2 and value.shape[0] == value.shape[1]
                dtypes = (torch.float64,) if form == "sum" else ROW_DTYPES
                if value.dtype not in dtypes or value.dim() != 2 or (form == "sum" and not square):
                    expected = "a square fp64 matrix" if form == "sum" else "a float matrix of key rows"
                    raise UniEraseError(f"{where}: expected {expected}, got {str(value.dtype)} {tuple(value.shape)}")
                if key_dim is not None and value.shape[1] != key_dim:
                    raise UniEraseError(f"{where}: {value.shape[0]} × {value.shape[1]}, but the model's keys have "
                                        f"{key_dim} dimensions")
                if not torch.isfinite(value).all():
                    raise UniEraseError(f"{where} holds NaN or infinite values; the state is corrupt")

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.previous_keys.values(), *self.key_rows.values()))

    @classmethod
    def load(cls, folder: str | Path) -> "EditState":
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            return cls()
        try:
            data = load_file(str(path))
        except Exception as err:  # safetensors raises its own error type for truncated or foreign files
            raise UniEraseError(f"{path}: unreadable edit state ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
        state = cls()
        for name, value in data.items():
            match = re.fullmatch(r"layer(\d+)\.(previous_keys|key_rows)", name)
            if match is None:
                raise UniEraseError(f"{path}: unexpected tensor {name!r} in the edit state")
            (state.key_rows if match.group(2) == "key_rows" else state.previous_keys)[int(match.group(1))] = value
        if not state:
            raise UniEraseError(f"{path}: the edit state is empty")
        return state
