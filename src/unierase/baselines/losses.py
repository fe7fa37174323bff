"""Loss terms of the fine-tuning baselines as pure functions of logits and labels (docs/method.md, "The fine-tuning baselines").

Conventions: ``logits`` are (B, T, V) for inputs (B, T); ``labels`` are (B, T) with -100 on
positions that are not scored (prompt, padding). Position t's logits predict token t+1, so the
functions shift internally. S(y|x) is the *summed* log-likelihood of the scored tokens of one
sequence; NLL is the *mean* token negative log-likelihood over all scored tokens of the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _shift(logits: torch.Tensor, labels: torch.Tensor):
    logits = logits[:, :-1].float()
    labels = labels[:, 1:]
    mask = labels != -100
    return logits, labels, mask


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """S(y|x) per sequence: the sum of log p(token) over scored positions, shape (B,)."""
    logits, labels, mask = _shift(logits, labels)
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token NLL over every scored position of the batch (the usual LM loss)."""
    logits, labels, _ = _shift(logits, labels)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(p_ref ‖ p_θ) per scored position, averaged over scored positions."""
    logits, labels, mask = _shift(logits, labels)
    ref = ref_logits[:, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    ref_logp = torch.log_softmax(ref, dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def uniform_kl(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(Uniform ‖ p_θ) per scored position, averaged: −log V − mean_v log p_v (0 at maximum entropy)."""
    logits, labels, mask = _shift(logits, labels)
    logp = torch.log_softmax(logits, dim=-1)
    vocab = logits.size(-1)
    kl = -math.log(vocab) - logp.mean(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def npo_loss(seq_logp: torch.Tensor, ref_seq_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO: (2/β)·mean log(1 + (π_θ/π_ref)^β) = −(2/β)·mean log σ(−β·(logπ_θ − logπ_ref)).

    Arguments are summed log-likelihoods (:func:`sequence_logprob`). Written with S = summed NLL
    the same term reads −(2/β)·mean log σ(β·(S_θ − S_ref)). The loss falls as the forget
    answer's likelihood drops below the reference's; at θ = ref it is (2/β)·log 2.
    """
    return -(2.0 / beta) * F.logsigmoid(-beta * (seq_logp - ref_seq_logp)).mean()


def dpo_loss(logp_forget: torch.Tensor, ref_logp_forget: torch.Tensor, logp_idk: torch.Tensor,
             ref_logp_idk: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO with the refusal preferred: −(2/β)·mean log σ(β·[(logπ_θ(y_idk) − logπ_ref(y_idk)) − (logπ_θ(y_f) − logπ_ref(y_f))]).

    Arguments are summed log-likelihoods. The specification's margin (S_ref(y_f) − S_θ(y_f)) −
    (S_ref(y_idk) − S_θ(y_idk)) is this one when S is read as the log-likelihood; read as the
    NLL it would prefer the true answer, contrary to the stated intent (the refusal preferred
    over the true answer), so the intent is implemented (docs/method.md).
    """
    margin = (logp_idk - ref_logp_idk) - (logp_forget - ref_logp_forget)
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()


def answer_preservation(logp_true: torch.Tensor, logp_idk: torch.Tensor, beta: float) -> torch.Tensor:
    """IDK+AP regulariser: −(1/β)·mean log σ(β·(logπ_θ(y_r|x_r) − logπ_θ(y_idk|x_r))), no reference.

    With S = summed NLL this is σ(β·(S_θ(y_idk|x_r) − S_θ(y_r|x_r))) (docs/method.md).
    """
    return -(1.0 / beta) * F.logsigmoid(beta * (logp_true - logp_idk)).mean()
