"""models/precision.py: a 16-bit model's rounding is not taken for a wrong shortcut, and a wrong
shortcut is not taken for rounding."""

import torch

from unierase.models.precision import same_logits


def test_a_16_bit_models_rounding_is_not_taken_for_a_soft_cap():
    """SmolLM2 in bf16: the own row's head check saw 1 unit in the last place, the replayed block
    output 4 to 5 (logits near 40 off by up to 1.25); both once failed the fp32 tolerance."""
    logits = torch.tensor([40.0, 13.875, -5.0625, 7.0, 0.25], dtype=torch.bfloat16)
    off = logits.float() + torch.tensor([1.25, 0.0625, 0.03125, 0.03125, 0.0009765625])
    assert same_logits(off, logits)
    assert not same_logits(off, logits.float())  # the same gap in an fp32 model is a wrong shortcut
    capped = 30 * torch.tanh(logits.float() / 30)  # Gemma 2's final soft-cap
    assert not same_logits(logits.float(), capped, torch.bfloat16)
    assert same_logits(logits, logits)
