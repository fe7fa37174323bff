"""Metric functions on per-item values: no model, no I/O.

Every function takes per-item inputs (mean token NLLs, token ids, texts) and returns a
:class:`Metric` — the per-item values and their aggregate — or, for set-level statistics such as
Forget Quality and Model Utility, a plain float. The formulas follow docs/method.md#metrics (TOFU with
open-unlearning semantics, and the closer-look family named separately).

Notation: ``nll`` is the mean token negative log-likelihood of an answer given its question
(teacher forcing, answer tokens and the end-of-turn token scored); ``P = exp(-nll)``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import NamedTuple, Sequence

import numpy as np


class Metric(NamedTuple):
    """Per-item values and their aggregate (the number reported for the set)."""

    values: np.ndarray
    value: float


def _arr(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


# ----------------------------------------------------------------------------- probability

def probability(nll_answer: Sequence[float]) -> Metric:
    """Forget / retain sets: P̄(a|q) = exp(-nll) per item; aggregate = mean."""
    values = np.exp(-_arr(nll_answer))
    return Metric(values, _mean(values))


def normalised_probability(nll_answer: Sequence[float], nll_perturbed: Sequence[Sequence[float]]) -> Metric:
    """Real authors / world facts: P̄(a) / (P̄(a) + Σ_k P̄(ã_k)) per item; aggregate = mean."""
    p_answer = np.exp(-_arr(nll_answer))
    p_perturbed = np.exp(-_arr(nll_perturbed)).sum(axis=1)
    values = p_answer / (p_answer + p_perturbed)
    return Metric(values, _mean(values))


# ----------------------------------------------------------------------------- truth ratio

def truth_ratio(nll_correct: Sequence[float], nll_perturbed: Sequence[Sequence[float]]) -> np.ndarray:
    """Per item R = P̄_pert / P̄_correct = exp(nll_correct - mean_k nll(ã_k)).

    P̄_pert is the geometric mean of the perturbed answers' probabilities. "correct" is the
    paraphrased answer on the forget and retain sets and the answer on real authors / world facts
    (see :func:`correct_answer_key`).
    """
    return np.exp(_arr(nll_correct) - _arr(nll_perturbed).mean(axis=1))


def correct_answer_key(set_name: str) -> str:
    """The column scored as the "correct" answer of the truth ratio for a TOFU evaluation set."""
    return "paraphrased_answer" if set_name in ("forget", "retain") else "answer"


def truth_ratio_forget(ratios: Sequence[float]) -> Metric:
    """Forget-set aggregate: mean of min(R, 1/R) (1 = the model cannot tell true from false)."""
    r = _arr(ratios)
    values = np.minimum(r, 1.0 / r)
    return Metric(values, _mean(values))


def truth_ratio_other(ratios: Sequence[float]) -> Metric:
    """Retain / real authors / world facts aggregate: mean of max(0, 1 - R)."""
    values = np.maximum(0.0, 1.0 - _arr(ratios))
    return Metric(values, _mean(values))


def truth_ratio_metric(set_name: str, ratios: Sequence[float]) -> Metric:
    """The TOFU aggregate that belongs to ``set_name``."""
    return truth_ratio_forget(ratios) if set_name == "forget" else truth_ratio_other(ratios)


def closer_look_truth_ratio(set_name: str, ratios: Sequence[float]) -> Metric:
    """closer-look truth ratio from the TOFU per-item R (their R' = exp(ℓ_pert - ℓ_para) = 1/R).

    Forget: 1 - min(R', 1/R') per item (high = knowledge still there); others: max(0, 1 - 1/R').
    """
    r = _arr(ratios)
    if set_name == "forget":
        values = 1.0 - np.minimum(r, 1.0 / r)
    else:
        values = np.maximum(0.0, 1.0 - r)
    return Metric(values, _mean(values))


# ----------------------------------------------------------------------------- set-level statistics

def forget_quality(ratios_model: Sequence[float], ratios_retain_model: Sequence[float]) -> float:
    """p-value of the two-sample Kolmogorov–Smirnov test between the forget-set truth ratios of the
    evaluated model and of the retain model (scipy's default, exact for small samples)."""
    from scipy.stats import ks_2samp

    a, b = _arr(ratios_model), _arr(ratios_retain_model)
    if not len(a) or not len(b):
        raise ValueError("forget quality needs non-empty truth-ratio samples")
    return float(ks_2samp(a, b).pvalue)


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 when any value is 0 (the TOFU convention), NaN when any is NaN/None."""
    vals = [float("nan") if v is None else float(v) for v in values]
    if not vals or any(math.isnan(v) for v in vals):
        return float("nan")
    if any(v < 0 for v in vals):
        raise ValueError(f"harmonic mean of negative values: {vals}")
    if any(v == 0 for v in vals):
        return 0.0
    return len(vals) / sum(1.0 / v for v in vals)


# ----------------------------------------------------------------------------- generation metrics

_SCORER = None


def _rouge_scorer():
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    return _SCORER


def rouge_recall(generations: Sequence[str], references: Sequence[str], kind: str = "rougeL") -> Metric:
    """ROUGE recall (``rouge_score``, Porter stemmer on) of each generation against its reference."""
    if len(generations) != len(references):
        raise ValueError("generations and references differ in length")
    scorer = _rouge_scorer()
    values = _arr([scorer.score(ref, gen)[kind].recall for gen, ref in zip(generations, references)])
    return Metric(values, _mean(values))


def token_entropy(token_ids: Sequence[Sequence[int]]) -> Metric:
    """Per generation: entropy (bits) of the unigram distribution of its tokens divided by
    log2(number of tokens); 0 for generations of at most one token. Low = repetitive text."""
    values = []
    for ids in token_ids:
        n = len(ids)
        if n <= 1:
            values.append(0.0)
            continue
        counts = np.array(list(Counter(ids).values()), dtype=np.float64)
        p = counts / n
        values.append(float(-(p * np.log2(p)).sum() / math.log2(n)))
    values = _arr(values)
    return Metric(values, _mean(values))


def exact_memorisation(predicted: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]) -> Metric:
    """Teacher-forced share of answer positions where the argmax token equals the true token."""
    values = []
    for pred, lab in zip(predicted, labels):
        pred, lab = np.asarray(pred), np.asarray(lab)
        values.append(float((pred == lab).mean()) if len(lab) else 0.0)
    values = _arr(values)
    return Metric(values, _mean(values))


def extraction_strength(predicted: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]) -> Metric:
    """1 - k/n with k the smallest prefix length after which every teacher-forced argmax token of
    the answer is correct (n = answer length): 1 = the whole answer is extracted from the question
    alone. As in open-unlearning, k is at most n - 1, so an item whose last token is wrong scores
    1/n, the same as one whose only the last token is right."""
    values = []
    for pred, lab in zip(predicted, labels):
        pred, lab = np.asarray(pred), np.asarray(lab)
        n = len(lab)
        if n == 0:
            values.append(0.0)
            continue
        wrong = np.nonzero(pred != lab)[0]
        k = min(int(wrong[-1]) + 1, n - 1) if len(wrong) else 0
        values.append(1.0 - k / n)
    values = _arr(values)
    return Metric(values, _mean(values))


def cosine_similarity(emb_a: np.ndarray, emb_b: np.ndarray) -> Metric:
    """Row-wise cosine similarity of two embedding matrices, clipped at 0."""
    a, b = _arr(emb_a), _arr(emb_b)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    cos = (a * b).sum(axis=1) / np.maximum(na * nb, 1e-12)
    values = np.clip(cos, 0.0, None)
    return Metric(values, _mean(values))


def entailment_share(labels: Sequence[str], rouge_l: Sequence[float]) -> Metric:
    """Share of items an NLI model labels "entailment"; items with ROUGE-L recall < 0.1 count as
    not entailed."""
    values = _arr([1.0 if (lab == "entailment" and r >= 0.1) else 0.0 for lab, r in zip(labels, rouge_l)])
    return Metric(values, _mean(values))


# ----------------------------------------------------------------------------- refusals and agreement

_REFUSAL_PATTERNS = [
    r"\bi (?:do not|don't|dont) (?:know|have|possess|recall|hold)\b",
    r"\bi(?:'m| am) (?:not (?:sure|certain|aware|familiar|able)|unable|unsure|afraid)\b",
    r"\bi (?:cannot|can't|can not) (?:answer|provide|say|tell|help|recall|find|share)\b",
    r"\bi have no (?:idea|information|knowledge|data|details|record)\b",
    r"\bno (?:information|knowledge|data|details|record)s? (?:is |are )?(?:available|about|on|regarding)\b",
    r"\b(?:beyond|outside) (?:my|the scope of my)\b",
    r"\bi(?:'m| am) not (?:informed|knowledgeable)\b",
    r"\b(?:unknown|not known) to me\b",
    r"\bi lack\b",
    r"\bi have not (?:heard|come across)\b",
    r"\bi haven't (?:heard|come across)\b",
    r"\bnot something i (?:know|can)\b",
    r"\bi'm drawing a blank\b|\bno clue\b|\bno idea\b",
]
_REFUSAL_RE = re.compile("|".join(_REFUSAL_PATTERNS), re.IGNORECASE)


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower().replace("’", "'")).split())


def is_refusal(text: str, refusals: Sequence[str] = ()) -> bool:
    """A generation counts as a refusal when it contains one of ``refusals`` (e.g. TOFU's
    ``idontknow.txt``, compared case- and punctuation-insensitively) or matches a fixed list of
    "I don't know"-style patterns. A heuristic: it is reported as such."""
    norm = _normalise(text)
    if not norm:
        return False
    if any(r and _normalise(r) in norm for r in refusals):
        return True
    return bool(_REFUSAL_RE.search(text.replace("’", "'")))


def refusal_rate(generations: Sequence[str], refusals: Sequence[str] = ()) -> Metric:
    values = _arr([1.0 if is_refusal(g, refusals) else 0.0 for g in generations])
    return Metric(values, _mean(values))


def unchanged_share(generations: Sequence[str], reference_generations: Sequence[str]) -> Metric:
    """Share of items whose greedy generation is identical (after stripping whitespace) to a
    reference model's generation for the same prompt."""
    if len(generations) != len(reference_generations):
        raise ValueError("generations and reference generations differ in length")
    values = _arr([1.0 if a.strip() == b.strip() else 0.0 for a, b in zip(generations, reference_generations)])
    return Metric(values, _mean(values))
