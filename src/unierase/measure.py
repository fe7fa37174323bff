"""Cost figures every writer records the same way: peak memory of this process."""

from __future__ import annotations

import resource
import sys

import torch


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (MiB; the GPU's peak allocation when that is higher)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mb = rss / 2**20 if sys.platform == "darwin" else rss / 1024  # macOS reports bytes, Linux KiB
    if torch.cuda.is_available():
        mb = max(mb, torch.cuda.max_memory_allocated() / 2**20)
    return round(mb, 1)
