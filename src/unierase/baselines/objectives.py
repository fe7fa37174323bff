"""The eight fine-tuning unlearning baselines (docs/method.md), registered by ``baselines/__init__.py``.

Each method is a small class made of one *forget term* (GA, NPO, ME, DPO, IDK) and one
*regulariser* on retain data (GD, KL, AP); the shared loop in :mod:`.run` calls
:meth:`Baseline.loss` on every micro-batch. A micro-batch is a dict with (where the method needs
them) ``forget`` (question → true answer), ``forget_idk`` (question → refusal), ``retain``
(retain question → its answer), ``retain_idk`` (retain question → refusal), and the precomputed
reference log-likelihoods ``ref_forget`` / ``ref_idk`` of the forget items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import losses
from .trainer import TrainConfig


@dataclass
class BaselineConfig(TrainConfig):
    """Settings of a fine-tuning baseline (loss = forget_coef·forget term + retain_coef·regulariser).

    Defaults were chosen for SmolLM2-135M on the TOFU target model (see benchmarks/); the paper's
    8B reference is lr 1e-5, 5 epochs, effective batch 32, one warm-up epoch, weight decay 0.01.
    """

    epochs: float = 5.0
    lr: float = 1e-5
    batch_size: int = 8
    beta: float = 0.1
    """Inverse temperature of NPO, DPO and the AP regulariser."""
    forget_coef: float = 1.0
    retain_coef: float = 1.0
    refusals: str | None = None
    """File of refusal sentences for DPO / IDK (default: TOFU's idontknow.txt, else a built-in list)."""


def _logits(model, part):
    return model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits


class Baseline:
    """A forget term plus a regulariser. Subclasses set the class attributes and the two terms."""

    name: str = ""
    needs_answer = True          # the forget requests must carry the answer being erased
    needs_retain = True          # a retain set is required
    needs_idk = False            # refusal versions of the forget questions
    needs_retain_idk = False     # refusal versions of the retain questions
    needs_ref_logprobs = False   # S_ref of forget answers / refusals (computed once before training)
    needs_ref_model = False      # reference distributions on retain positions (KL)
    default_forget_coef = 1.0

    def __init__(self, config: BaselineConfig, ref_model=None):
        self.config = config
        self.ref_model = ref_model  # a frozen copy, or a context-managed adapter-free view (LoRA)

    def forget_term(self, model, batch) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def regulariser(self, model, batch) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def loss(self, model, batch) -> tuple[torch.Tensor, dict]:
        forget, logs_f = self.forget_term(model, batch)
        reg, logs_r = self.regulariser(model, batch)
        total = self.config.forget_coef * forget + self.config.retain_coef * reg
        return total, {"loss": total.item(), **logs_f, **logs_r}


# ----------------------------------------------------------------------------- forget terms

class GradientAscent(Baseline):
    """GA: gradient ascent on the forget answers."""

    def forget_term(self, model, batch):
        nll = losses.mean_nll(_logits(model, batch["forget"]), batch["forget"]["labels"])
        return -nll, {"forget_nll": nll.item()}


class NegativePreference(Baseline):
    """NPO: negative preference optimisation, relative to the start model."""

    needs_ref_logprobs = True

    def forget_term(self, model, batch):
        seq = losses.sequence_logprob(_logits(model, batch["forget"]), batch["forget"]["labels"])
        term = losses.npo_loss(seq, batch["ref_forget"], self.config.beta)
        return term, {"npo": term.item(), "forget_logp": seq.mean().item()}


class MaximumEntropy(Baseline):
    """ME: the forget answers' next-token distributions pushed towards uniform."""

    default_forget_coef = 0.1

    def forget_term(self, model, batch):
        term = losses.uniform_kl(_logits(model, batch["forget"]), batch["forget"]["labels"])
        return term, {"uniform_kl": term.item()}


class PreferRefusal(Baseline):
    """DPO: a refusal preferred to the forget answer, relative to the start model."""

    needs_idk = True
    needs_ref_logprobs = True

    def forget_term(self, model, batch):
        seq_f = losses.sequence_logprob(_logits(model, batch["forget"]), batch["forget"]["labels"])
        seq_i = losses.sequence_logprob(_logits(model, batch["forget_idk"]), batch["forget_idk"]["labels"])
        term = losses.dpo_loss(seq_f, batch["ref_forget"], seq_i, batch["ref_idk"], self.config.beta)
        return term, {"dpo": term.item(), "forget_logp": seq_f.mean().item(), "idk_logp": seq_i.mean().item()}


class LearnRefusal(Baseline):
    """IDK: a refusal learnt as the answer to the forget questions."""

    needs_answer = False
    needs_idk = True

    def forget_term(self, model, batch):
        nll = losses.mean_nll(_logits(model, batch["forget_idk"]), batch["forget_idk"]["labels"])
        return nll, {"idk_nll": nll.item()}


# ----------------------------------------------------------------------------- regularisers

class RetainNLL(Baseline):
    """GD: gradient descent on the retain answers."""

    def regulariser(self, model, batch):
        nll = losses.mean_nll(_logits(model, batch["retain"]), batch["retain"]["labels"])
        return nll, {"retain_nll": nll.item()}


class RetainKL(Baseline):
    """KL: KL(p_ref ‖ p_θ) to the start model over the retain answer positions."""

    needs_ref_model = True

    def regulariser(self, model, batch):
        logits = _logits(model, batch["retain"])
        with torch.no_grad():
            ref_logits = self.ref_model(batch["retain"])
        kl = losses.kl_to_reference(logits, ref_logits, batch["retain"]["labels"])
        return kl, {"retain_kl": kl.item()}


class AnswerPreservation(Baseline):
    """AP: keep the true retain answer more likely than a refusal (no reference model)."""

    needs_retain_idk = True

    def regulariser(self, model, batch):
        true = losses.sequence_logprob(_logits(model, batch["retain"]), batch["retain"]["labels"])
        idk = losses.sequence_logprob(_logits(model, batch["retain_idk"]), batch["retain_idk"]["labels"])
        ap = losses.answer_preservation(true, idk, self.config.beta)
        return ap, {"ap": ap.item()}


# ----------------------------------------------------------------------------- the eight methods

class GA_GD(GradientAscent, RetainNLL):
    name = "ga+gd"


class GA_KL(GradientAscent, RetainKL):
    name = "ga+kl"


class NPO_GD(NegativePreference, RetainNLL):
    name = "npo+gd"


class NPO_KL(NegativePreference, RetainKL):
    name = "npo+kl"


class ME_GD(MaximumEntropy, RetainNLL):
    name = "me+gd"


class DPO_GD(PreferRefusal, RetainNLL):
    name = "dpo+gd"


class DPO_KL(PreferRefusal, RetainKL):
    name = "dpo+kl"


class IDK_AP(LearnRefusal, AnswerPreservation):
    name = "idk+ap"


BASELINES: tuple[type[Baseline], ...] = (GA_GD, GA_KL, NPO_GD, NPO_KL, ME_GD, DPO_GD, DPO_KL, IDK_AP)
"""Every baseline of this module, in the order ``baselines/__init__.py`` registers them."""
