"""The sequential edit state saved beside an edited checkpoint.

``unierase_state.safetensors`` holds, per edited layer, K_p K_pᵀ: the summed outer products of all
keys edited so far. A later round adds it to its system so it does not undo earlier edits.
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
    """Layer → Σ k kᵀ (m × m, fp64) over every key edited in earlier rounds."""

    def get(self, layer: int) -> torch.Tensor | None:
        return self.previous_keys.get(layer)

    def add(self, layer: int, keys: torch.Tensor) -> None:
        k = keys.to(torch.float64)
        outer = k @ k.T
        self.previous_keys[layer] = outer if layer not in self.previous_keys else self.previous_keys[layer] + outer

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
