"""Where each architecture keeps the blocks and their MLP output projection.

Architecture differences are data here (a module path, a transpose flag), found from the module
structure, never from the model's name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..storage import UniEraseError

# (path inside a block, weight stored as (in, out) like GPT-2's Conv1D)
MLP_OUTPUT_PATHS: tuple[str, ...] = (
    "mlp.down_proj",  # Llama, Qwen2, Mistral, Gemma
    "mlp.c_proj",  # GPT-2 (Conv1D, transposed weight)
    "mlp.dense_4h_to_h",  # GPT-NeoX
    "mlp.fc2",  # Phi
)
POST_MLP_NORM_PATHS: tuple[str, ...] = (
    "post_feedforward_layernorm",  # Gemma 2 and 3, OLMo 2: a norm between the MLP and the residual stream
)


def _get(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _is_transposed(module: nn.Module) -> bool:
    """Conv1D stores weight as (in_features, out_features); nn.Linear as (out, in)."""
    if isinstance(module, nn.Linear):
        return False
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return True
    raise UniEraseError(f"unsupported MLP output module type {type(module).__name__}")


def _closest_unit_rms(scale: torch.Tensor, wanted: torch.Tensor, iterations: int = 100) -> torch.Tensor:
    """Per row: the x with rms(x) = 1 that minimises ‖scale ⊙ x − wanted‖ (the best an RMSNorm with
    elementwise ``scale`` can output): x = scale ⊙ wanted / (scale² + μ), μ found by bisection so
    that rms(x) = 1 (rms(x) falls as μ grows above −min scale²)."""
    s2 = scale.pow(2)
    top = s2.min(-1, keepdim=True).values
    lo = -top + 1e-9 * (1 + top)  # just above the pole
    hi = torch.ones_like(wanted[:, :1]) * (s2.max() + (scale * wanted).pow(2).sum(-1, keepdim=True).sqrt())

    def rms_at(mu):
        return (scale * wanted / (s2 + mu)).pow(2).mean(-1, keepdim=True).sqrt()

    lo = lo.expand_as(hi).clone()
    for _ in range(iterations):
        mid = (lo + hi) / 2
        big = rms_at(mid) > 1
        lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
    return scale * wanted / (s2 + (lo + hi) / 2)


def _find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of decoder blocks: the longest ModuleList whose length is the layer count."""
    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (n_layers is None or len(module) == n_layers):
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise UniEraseError(f"could not find the decoder blocks of {type(model).__name__} (a ModuleList of {n_layers} layers)")
    return best


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, in order (what a sharded or traced run walks layer by layer)."""
    return _find_blocks(model)[1]


@dataclass
class MLPOutputAdapter:
    """Access to block ``i`` and its MLP output projection ``W_i`` (key = its input)."""

    blocks_path: str
    blocks: nn.ModuleList
    mlp_output_path: str
    transposed: bool
    post_norm_path: str | None = None
    """The norm a block applies to its MLP's output before adding it to the residual stream (None: none)."""

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def block(self, layer: int) -> nn.Module:
        return self.blocks[layer]

    def mlp_output(self, layer: int) -> nn.Module:
        return _get(self.blocks[layer], self.mlp_output_path)

    @torch.no_grad()
    def output_change(self, layer: int, keys: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        """The change of layer ``layer``'s MLP output at ``keys`` (m × N) that changes what the block
        adds to the residual stream by ``change`` (d × N, fp32): ``change`` itself where the output is
        added as it is (the closed forms' assumption). Through a post-MLP RMSNorm (Gemma), which
        keeps only the output's direction, written ``change`` itself would be rescaled away (the
        targets never reached, each pass writing more); instead, the pre-norm output whose
        normalised form comes closest to (normalised output + change) — exactly it where that is
        reachable — at the output's own scale."""
        if self.post_norm_path is None:
            return change
        norm, module = _get(self.blocks[layer], self.post_norm_path), self.mlp_output(layer)
        weight = module.weight
        before = module(keys.T.to(device=weight.device, dtype=weight.dtype)).float()
        scale = norm(torch.ones_like(before[:1])).float()  # the norm's elementwise scale γ (at rms 1)
        wanted = norm(before.to(weight.dtype)).float() + change.T.to(before.device)
        unit = _closest_unit_rms(scale.double(), wanted.double()).float()
        rms = before.pow(2).mean(-1, keepdim=True).sqrt()
        return (unit * rms - before).T.to(change.device)

    def module_name(self, layer: int) -> str:
        return f"{self.blocks_path}.{layer}.{self.mlp_output_path}"

    def weight(self, layer: int) -> torch.Tensor:
        """The projection weight as the (d_out × m_in) matrix W with output = W k."""
        w = self.mlp_output(layer).weight
        return w.t() if self.transposed else w

    def key_dim(self, layer: int) -> int:
        return self.weight(layer).shape[1]

    @torch.no_grad()
    def add_to_weight(self, layer: int, delta: torch.Tensor) -> None:
        """Add ΔW (d_out × m_in, output = W k convention) to layer ``layer`` in place."""
        param = self.mlp_output(layer).weight
        delta = delta.t() if self.transposed else delta
        param.add_(delta.to(device=param.device, dtype=param.dtype))

    def edited_fraction(self, layers: list[int], model: nn.Module) -> float:
        """Edited matrices' sizes / all parameters (the paper's "parameter fraction")."""
        edited = sum(self.mlp_output(i).weight.numel() for i in layers)
        total = sum(p.numel() for p in model.parameters())
        return edited / total


def find_mlp_output(model: nn.Module) -> MLPOutputAdapter:
    """Locate the blocks and their MLP output projection, or say clearly what was searched for."""
    blocks_path, blocks = _find_blocks(model)
    post_norm = next((p for p in POST_MLP_NORM_PATHS if _get(blocks[0], p) is not None), None)
    for path in MLP_OUTPUT_PATHS:
        module = _get(blocks[0], path)
        if module is not None and hasattr(module, "weight"):
            return MLPOutputAdapter(blocks_path, blocks, path, _is_transposed(module), post_norm)
    raise UniEraseError(
        f"unsupported model {type(model).__name__}: no MLP output projection found in {blocks_path}[0] "
        f"(searched {', '.join(MLP_OUTPUT_PATHS)})"
    )
