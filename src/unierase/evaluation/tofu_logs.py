"""Read the TOFU authors' per-item evaluation logs and aggregate them with this project's code.

A log folder (e.g. ``eval_logs/llama2-7b_full``) holds ``eval_log.json`` (retain set),
``eval_log_forget.json`` (forget set), ``eval_real_author_wo_options.json`` and
``eval_real_world_wo_options.json``: dicts of per-item dicts keyed "0".."N-1", with mean token
NLLs ``avg_gt_loss`` (answer), ``avg_paraphrased_loss`` (the truth ratio's "correct" answer),
``average_perturb_loss`` (list per item) and ``generated_text`` = [prompt, generation, answer].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..storage import UniEraseError
from . import metrics as M
from . import suites

LOG_FILES = {
    "retain": "eval_log.json",
    "forget": "eval_log_forget.json",
    "real_authors": "eval_real_author_wo_options.json",
    "world_facts": "eval_real_world_wo_options.json",
}
_COLUMNS = ("avg_gt_loss", "avg_paraphrased_loss", "average_perturb_loss")


def read_log(path: str | Path) -> dict:
    """Per-item arrays of one log file, items ordered by their integer key."""
    path = Path(path)
    if not path.is_file():
        raise UniEraseError(f"TOFU log file {path} not found")
    data = json.loads(path.read_text(encoding="utf-8"))
    for col in _COLUMNS:
        if col not in data:
            raise UniEraseError(f"TOFU log file {path} has no column '{col}'")
    keys = sorted(data["avg_gt_loss"], key=int)
    out = {
        "nll_answer": np.array([data["avg_gt_loss"][k] for k in keys], dtype=np.float64),
        "nll_correct": np.array([data["avg_paraphrased_loss"][k] for k in keys], dtype=np.float64),
        "nll_perturbed": np.array([data["average_perturb_loss"][k] for k in keys], dtype=np.float64),
    }
    if "generated_text" in data:
        out["generated_text"] = [data["generated_text"][k] for k in keys]
    if "rougeL_recall" in data:
        out["rougeL_recall"] = np.array([data["rougeL_recall"][k] for k in keys], dtype=np.float64)
    return out


def forget_ratios_from_log(path: str | Path) -> np.ndarray:
    """Per-item truth ratios R of a forget-set log (used as the retain model's sample)."""
    log = read_log(path)
    return M.truth_ratio(log["nll_correct"], log["nll_perturbed"])


def aggregate_log_folder(folder: str | Path, *, recompute_rouge: bool = False) -> dict:
    """TOFU aggregates of one model's log folder, in the layout of ``reference_aggregates.json``.

    ROUGE-L recall is taken from the logged per-item values, or recomputed from
    ``generated_text`` when ``recompute_rouge`` is set. Per-item truth ratios of the forget set are
    returned under ``"_forget_ratios"``.
    """
    folder = Path(folder)
    out: dict = {}
    for set_name, filename in LOG_FILES.items():
        log = read_log(folder / filename)
        if recompute_rouge:
            gens = [g[1] for g in log["generated_text"]]
            refs = [g[2] for g in log["generated_text"]]
            rouge = M.rouge_recall(gens, refs).values
        else:
            rouge = log["rougeL_recall"]
        res = suites.tofu_set(set_name, nll_answer=log["nll_answer"], nll_correct=log["nll_correct"],
                              nll_perturbed=log["nll_perturbed"], rouge_l=rouge)
        out[set_name] = {
            "probability": res["probability"].value,
            "rougeL_recall": res["rougeL_recall"].value,
            "truth_ratio": res["truth_ratio"].value,
            "n": int(len(log["nll_answer"])),
        }
        if set_name == "forget":
            out["_forget_ratios"] = res["ratios"]
    out["model_utility"] = suites.tofu_model_utility(out)
    return out


def forget_quality_of_folders(model_folder: str | Path, retain_folder: str | Path) -> float:
    a = aggregate_log_folder(model_folder)["_forget_ratios"]
    b = aggregate_log_folder(retain_folder)["_forget_ratios"]
    return M.forget_quality(a, b)
