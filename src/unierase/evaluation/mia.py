"""Membership-inference scores and PrivLeak, as plain functions of per-token log-probabilities.

Each attack gives every item a membership score, higher = "more likely seen in training":

- ``loss_score``: minus the mean negative log-likelihood of the answer tokens (Yeom et al. 2018).
- ``zlib_score``: minus the mean NLL divided by the zlib-compressed length of the text in bytes
  (Carlini et al. 2021: likelihood relative to how compressible the text is).
- ``min_k_score``: the mean of the ``k`` lowest token log-probabilities (Min-K% Prob, Shi et al. 2024;
  k = 0.4 of the tokens, at least one).
- ``min_k_plus_plus_score``: the same over each token's log-probability standardised by the mean and
  standard deviation of the log-probabilities under the model's own next-token distribution at that
  position (Min-K%++, Zhang et al. 2025).

``auc(members, non_members)`` is the probability that a member scores above a non-member (ties count
one half: the Mann–Whitney statistic, equal to the ROC AUC). For unlearning, members are the forget
set and non-members a holdout set of the same kind: the retain model, which never saw either, sits
near 0.5. ``privleak(auc_model, auc_retain)`` = (AUC_model − AUC_retain) / AUC_retain (MUSE): near 0
when the unlearned model is as ignorant of the forget set as the retain model, positive when it
still recognises it, negative when it over-forgets.
"""

from __future__ import annotations

import math
import zlib

MIN_K = 0.4
"""The share of lowest-scoring tokens Min-K and Min-K++ average over."""


def loss_score(token_logprobs: list[float]) -> float:
    return sum(token_logprobs) / len(token_logprobs)


def zlib_score(token_logprobs: list[float], text: str) -> float:
    return loss_score(token_logprobs) / len(zlib.compress(text.encode("utf-8")))


def _lowest_mean(values: list[float], k: float) -> float:
    count = max(1, int(len(values) * k))
    return sum(sorted(values)[:count]) / count


def min_k_score(token_logprobs: list[float], k: float = MIN_K) -> float:
    return _lowest_mean(token_logprobs, k)


def min_k_plus_plus_score(token_logprobs: list[float], means: list[float], stds: list[float], k: float = MIN_K) -> float:
    """``means[t]``/``stds[t]``: mean and standard deviation of log p(z) for z drawn from the model's
    next-token distribution at position t (E_z[log p(z)] = Σ p log p, and its spread)."""
    standardised = [(x - m) / max(s, 1e-12) for x, m, s in zip(token_logprobs, means, stds)]
    return _lowest_mean(standardised, k)


def auc(members: list[float], non_members: list[float]) -> float:
    """P(member score > non-member score), ties counting one half."""
    if not members or not non_members:
        return math.nan
    wins = sum(1.0 if m > n else 0.5 if m == n else 0.0 for m in members for n in non_members)
    return wins / (len(members) * len(non_members))


def privleak(auc_model: float, auc_retain: float) -> float:
    return (auc_model - auc_retain) / auc_retain


def token_statistics(logits, labels) -> list[tuple[list[float], list[float], list[float]]]:
    """Per sequence of a batch: each scored token's log-probability, and the mean and standard
    deviation of log p under the model's next-token distribution at its position (what Min-K++
    needs). ``logits`` (B × T × V) predict ``labels`` (B × T) shifted by one; −100 is not scored."""
    import torch

    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = labels[:, 1:]
    scored = target != -100
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    p = logp.exp()
    plogp = torch.where(p > 0, p * logp, torch.zeros_like(p))
    mean = plogp.sum(-1)
    second = torch.where(p > 0, p * logp.square(), torch.zeros_like(p)).sum(-1)
    std = (second - mean.square()).clamp(min=0).sqrt()
    return [(picked[b][scored[b]].tolist(), mean[b][scored[b]].tolist(), std[b][scored[b]].tolist())
            for b in range(logits.shape[0])]


ATTACKS = ("loss", "zlib", "min_k", "min_k++")
"""The membership attacks ``unierase eval`` reports, in report order."""


def attack_scores(items: list[dict], texts: list[str], k: float = MIN_K) -> dict[str, list[float]]:
    """Every attack's per-item scores from the items' token statistics (``logprobs``, ``means``,
    ``stds``, as ``token_statistics`` gives them) and the scored texts (for zlib)."""
    return {
        "loss": [loss_score(it["logprobs"]) for it in items],
        "zlib": [zlib_score(it["logprobs"], t) for it, t in zip(items, texts)],
        "min_k": [min_k_score(it["logprobs"], k) for it in items],
        "min_k++": [min_k_plus_plus_score(it["logprobs"], it["means"], it["stds"], k) for it in items],
    }


def membership(members: list[dict], member_texts: list[str], non_members: list[dict], non_member_texts: list[str],
               retain_auc: dict[str, float] | None = None) -> dict:
    """Each attack's AUC of members against non-members, and PrivLeak against the retain model's
    AUCs when given (``None`` otherwise)."""
    ours = attack_scores(members, member_texts)
    theirs = attack_scores(non_members, non_member_texts)
    aucs = {a: round(auc(ours[a], theirs[a]), 4) for a in ATTACKS}
    leak = ({a: round(privleak(aucs[a], retain_auc[a]), 4) for a in ATTACKS if retain_auc.get(a)}
            if retain_auc else None)
    return {"members": len(members), "non_members": len(non_members), "auc": aucs, "privleak": leak,
            "retain_auc": retain_auc}
