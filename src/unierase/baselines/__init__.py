"""Fine-tuning unlearning baselines (METHOD.md §4) and the TOFU target/retain fine-tuning.

``run_baseline("npo+gd", model, requests, out, retain=...)`` unlearns with one of the eight
methods in :data:`METHODS`; ``finetune(...)`` makes the target and retain models.
"""

from .methods import METHODS, Baseline, BaselineConfig, get_method
from .run import BaselineResult, make_config, run_baseline

__all__ = ["METHODS", "Baseline", "BaselineConfig", "BaselineResult", "get_method", "make_config", "run_baseline"]
