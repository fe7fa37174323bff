"""Fine-tuning unlearning baselines (docs/method.md) and the TOFU target/retain fine-tuning.

Each baseline is a small class in ``objectives`` (a forget term plus a regulariser), registered
below as a method of ``unierase forget --method``; ``run_baseline`` is the shared training loop
around it; ``finetune`` makes the target and retain models.
"""

from .objectives import BASELINES, Baseline, BaselineConfig
from .options import BaselineOptions, TrainOptions
from .run import BaselineResult, baseline_class, make_config, register_baseline, run_baseline

for _cls in BASELINES:
    register_baseline(_cls)

__all__ = ["BASELINES", "Baseline", "BaselineConfig", "BaselineOptions", "BaselineResult", "TrainOptions",
           "baseline_class", "make_config", "register_baseline", "run_baseline"]
