"""TOFU evaluation with exact metric semantics (docs/method.md#metrics).

- :func:`evaluate` / :class:`EvalConfig` — run the evaluation of one model (``unierase eval``).
- :mod:`.metrics` — metric functions on per-item values (each returns per-item values + aggregate).
- :mod:`.suites` — the TOFU and closer-look aggregations (Model Utility, Forget Efficacy, ...).
- :mod:`.scoring` — batched teacher-forced scoring and batched greedy generation.
- :mod:`.tofu_logs` — aggregate the TOFU authors' own per-item logs (the oracle).

Heavy modules (torch, transformers) load on first use, so the CLI starts quickly.
"""

from .config import EvalConfig

__all__ = ["EvalConfig", "EvalResult", "evaluate"]


def __getattr__(name):
    if name in ("evaluate", "EvalResult"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
