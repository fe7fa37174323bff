"""What counts as the same logits when a model runs in its own dtype."""

from __future__ import annotations

import torch


def same_logits(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype | None = None) -> bool:
    """Whether ``got`` (logits computed a cheaper or another way) matches ``want`` (the model's own)
    to the precision of ``dtype`` (default: ``want``'s). A 16-bit model rounds every layer's output,
    so the same product taken another way (another batch, a replayed block, a recomputed head) lands
    a few units in the last place of the logits away; a wrong shortcut (a soft-cap left out, a cache
    or mask it does not know) moves them by far more."""
    tol = max(1e-3, 8 * torch.finfo(dtype or want.dtype).eps)
    return bool(torch.allclose(got.float(), want.float(), rtol=tol, atol=tol))
