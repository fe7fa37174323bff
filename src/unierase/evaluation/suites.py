"""The metric suites: set-level numbers assembled from per-item values.

These functions know which formula belongs to which set (the per-split "correct" answer, the
forget vs other truth-ratio aggregate, the normalised probability on real authors / world facts)
and how the headline numbers combine them. They take per-item arrays only, so the same code
aggregates this project's own per-item values and the TOFU authors' logs
(:mod:`unierase.evaluation.tofu_logs`).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from . import metrics as M

UTILITY_SETS = ("retain", "real_authors", "world_facts")
TOFU_UTILITY_METRICS = ("probability", "rougeL_recall", "truth_ratio")
CLOSER_LOOK_METRICS = ("rougeL_recall", "probability", "truth_ratio", "token_entropy", "cosine_similarity", "entailment")
CLOSER_LOOK_FORGET_TERMS = ("rougeL_recall", "probability", "truth_ratio", "cosine_similarity", "entailment")


def set_probability(set_name: str, nll_answer: Sequence[float], nll_perturbed: Sequence[Sequence[float]]) -> M.Metric:
    """Plain P̄(a|q) on forget/retain; normalised over the options on real authors / world facts."""
    if set_name in ("forget", "retain"):
        return M.probability(nll_answer)
    return M.normalised_probability(nll_answer, nll_perturbed)


def tofu_set(set_name: str, *, nll_answer, nll_correct, nll_perturbed, rouge_l=None) -> dict:
    """TOFU numbers of one set: ``{"probability", "truth_ratio", "rougeL_recall"}`` as Metrics plus the
    per-item truth ratios R under ``"ratios"``. ``rouge_l`` is the per-item ROUGE-L recall (or None)."""
    ratios = M.truth_ratio(nll_correct, nll_perturbed)
    out = {
        "probability": set_probability(set_name, nll_answer, nll_perturbed),
        "truth_ratio": M.truth_ratio_metric(set_name, ratios),
        "ratios": ratios,
    }
    if rouge_l is not None:
        values = np.asarray(rouge_l, dtype=np.float64)
        out["rougeL_recall"] = M.Metric(values, float(values.mean()))
    return out


def tofu_model_utility(per_set: Mapping[str, Mapping[str, float | None]]) -> float | None:
    """Harmonic mean of {Probability, ROUGE-L recall, Truth ratio} × {retain, real authors, world facts}.
    ``per_set[set][metric]`` are the aggregates; None when any of the nine is missing."""
    values = [per_set.get(s, {}).get(m) for s in UTILITY_SETS for m in TOFU_UTILITY_METRICS]
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return None
    return M.harmonic_mean(values)


def closer_look_set(set_name: str, *, tofu: Mapping, token_entropy: M.Metric | None = None,
                    cosine: M.Metric | None = None, entailment: M.Metric | None = None) -> dict:
    """closer-look numbers of one set, from the TOFU per-item values of the same set."""
    out: dict = {
        "rougeL_recall": tofu.get("rougeL_recall"),
        "probability": tofu["probability"],
        "truth_ratio": M.closer_look_truth_ratio(set_name, tofu["ratios"]),
        "token_entropy": token_entropy,
        "cosine_similarity": cosine,
        "entailment": entailment,
    }
    return out


def _value(metric) -> float | None:
    if metric is None:
        return None
    return float(metric.value if isinstance(metric, M.Metric) else metric)


def closer_look_headline(per_set: Mapping[str, Mapping[str, object]]) -> dict:
    """Forget Efficacy and the 18-term Model Utility.

    Each is None when one of its terms is absent (e.g. no NLI model); the ``*_available`` variants
    use the terms that exist and name them, so that they are never mistaken for the full metric.
    """
    forget = per_set.get("forget", {})
    fe_terms = {m: _value(forget.get(m)) for m in CLOSER_LOOK_FORGET_TERMS}
    mu_terms = {f"{s}.{m}": _value(per_set.get(s, {}).get(m)) for s in UTILITY_SETS for m in CLOSER_LOOK_METRICS}
    fe_present = {k: v for k, v in fe_terms.items() if v is not None}
    mu_present = {k: v for k, v in mu_terms.items() if v is not None}
    out = {
        "forget_efficacy": (1.0 - float(np.mean(list(fe_terms.values())))) if len(fe_present) == len(fe_terms) else None,
        "model_utility_18": M.harmonic_mean(list(mu_terms.values())) if len(mu_present) == len(mu_terms) else None,
        "forget_efficacy_available": (1.0 - float(np.mean(list(fe_present.values())))) if fe_present else None,
        "forget_efficacy_available_terms": sorted(fe_present),
        "model_utility_available": M.harmonic_mean(list(mu_present.values())) if mu_present else None,
        "model_utility_available_terms": len(mu_present),
        "absent_terms": sorted({f"forget.{k}" for k, v in fe_terms.items() if v is None}
                               | {k for k, v in mu_terms.items() if v is None}),
    }
    return out
