"""Each loss term against a hand computation on fixed logits."""

import math

import pytest
import torch

from unierase.baselines import losses

# One sequence of 3 tokens over a vocabulary of 3; position 0 is the prompt (label -100).
LOGITS = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 3.0], [0.5, 0.5, 0.5]]])
LABELS = torch.tensor([[-100, 1, 2]])


def log_softmax_row(row):
    z = sum(math.exp(v) for v in row)
    return [v - math.log(z) for v in row]


LP0 = log_softmax_row([1.0, 2.0, 0.0])   # predicts token at position 1 (label 1)
LP1 = log_softmax_row([0.0, 0.0, 3.0])   # predicts token at position 2 (label 2)


def test_sequence_logprob_and_nll():
    expected = LP0[1] + LP1[2]
    assert losses.sequence_logprob(LOGITS, LABELS).item() == pytest.approx(expected, abs=1e-6)
    assert losses.mean_nll(LOGITS, LABELS).item() == pytest.approx(-expected / 2, abs=1e-6)


def test_padding_is_not_scored():
    logits = torch.cat([LOGITS, torch.randn(1, 2, 3)], dim=1)
    labels = torch.tensor([[-100, 1, 2, -100, -100]])
    assert losses.sequence_logprob(logits, labels).item() == pytest.approx(LP0[1] + LP1[2], abs=1e-6)


def test_uniform_kl_hand_computed():
    # KL(U || p) = sum_v (1/V) (log(1/V) - log p_v), averaged over the two scored positions.
    kl0 = sum((1 / 3) * (math.log(1 / 3) - lp) for lp in LP0)
    kl1 = sum((1 / 3) * (math.log(1 / 3) - lp) for lp in LP1)
    assert losses.uniform_kl(LOGITS, LABELS).item() == pytest.approx((kl0 + kl1) / 2, abs=1e-6)
    flat = torch.zeros(1, 3, 5)
    assert losses.uniform_kl(flat, torch.tensor([[-100, 0, 1]])).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_to_reference_hand_computed():
    ref = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [9.0, 9.0, 9.0]]])
    r0 = log_softmax_row([0.0, 0.0, 0.0])
    r1 = log_softmax_row([1.0, 0.0, 0.0])
    kl0 = sum(math.exp(a) * (a - b) for a, b in zip(r0, LP0))
    kl1 = sum(math.exp(a) * (a - b) for a, b in zip(r1, LP1))
    assert losses.kl_to_reference(LOGITS, ref, LABELS).item() == pytest.approx((kl0 + kl1) / 2, abs=1e-6)
    assert losses.kl_to_reference(LOGITS, LOGITS.clone(), LABELS).item() == pytest.approx(0.0, abs=1e-6)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_npo_scaling():
    beta = 0.1
    s_theta = torch.tensor([-10.0, -4.0])
    s_ref = torch.tensor([-8.0, -6.0])
    # (2/β)·mean log(1 + (π_θ/π_ref)^β)
    expected = (2 / beta) * sum(math.log(1 + math.exp(beta * (a - b))) for a, b in zip([-10.0, -4.0], [-8.0, -6.0])) / 2
    assert losses.npo_loss(s_theta, s_ref, beta).item() == pytest.approx(expected, rel=1e-6)
    # At θ = ref the loss is (2/β)·log 2, and lowering the forget likelihood lowers the loss.
    assert losses.npo_loss(s_ref, s_ref, beta).item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)
    assert losses.npo_loss(s_ref - 5, s_ref, beta) < losses.npo_loss(s_ref, s_ref, beta)


def test_dpo_scaling_prefers_refusal():
    beta = 0.1
    f, f_ref, i, i_ref = torch.tensor([-12.0]), torch.tensor([-10.0]), torch.tensor([-5.0]), torch.tensor([-7.0])
    margin = (-5.0 + 7.0) - (-12.0 + 10.0)  # refusal gained 2, answer lost 2
    expected = -(2 / beta) * math.log(sigmoid(beta * margin))
    assert losses.dpo_loss(f, f_ref, i, i_ref, beta).item() == pytest.approx(expected, rel=1e-6)
    assert losses.dpo_loss(f_ref, f_ref, i_ref, i_ref, beta).item() == pytest.approx(2 / beta * math.log(2), rel=1e-6)
    # Moving towards the refusal lowers the loss; towards the answer raises it.
    assert losses.dpo_loss(f, f_ref, i, i_ref, beta) < losses.dpo_loss(f_ref, f_ref, i_ref, i_ref, beta)
    assert losses.dpo_loss(i, f_ref, f, i_ref, beta) > losses.dpo_loss(f_ref, f_ref, i_ref, i_ref, beta)


def test_answer_preservation():
    beta = 0.1
    true, idk = torch.tensor([-3.0, -9.0]), torch.tensor([-6.0, -4.0])
    expected = -(1 / beta) * (math.log(sigmoid(beta * 3.0)) + math.log(sigmoid(beta * -5.0))) / 2
    assert losses.answer_preservation(true, idk, beta).item() == pytest.approx(expected, rel=1e-6)


def test_gradient_directions():
    """GA lowers the answer likelihood; ME pushes towards uniform."""
    logits = LOGITS.clone().requires_grad_(True)
    (-losses.mean_nll(logits, LABELS)).backward()
    # gradient ascent on NLL: the label logit's gradient is positive (descent lowers it)
    assert logits.grad[0, 0, 1] > 0 and logits.grad[0, 1, 2] > 0
    logits.grad = None
    losses.uniform_kl(logits, LABELS).backward()
    assert logits.grad[0, 1, 2] > 0 and logits.grad[0, 1, 0] < 0  # peak is lowered, the others raised
