"""evaluation/mia.py: each membership-inference score and PrivLeak on small hand-computed inputs."""

import math
import zlib

import pytest
import torch

from unierase.evaluation.mia import (auc, loss_score, min_k_plus_plus_score, min_k_score, privleak, token_statistics,
                                     zlib_score)


def test_loss_and_zlib():
    assert loss_score([-1.0, -3.0]) == -2.0
    assert len(zlib.compress(b"a")) == 9  # 2 header bytes, a 3-byte deflate block, the 4-byte checksum
    assert zlib_score([-2.0], "a") == pytest.approx(-2.0 / 9)


def test_min_k_averages_the_lowest_share():
    # 40 % of 5 tokens: the 2 lowest, −8 and −5
    assert min_k_score([-1.0, -5.0, -2.0, -8.0, -3.0]) == -6.5
    assert min_k_score([-4.0]) == -4.0  # at least one token


def test_min_k_plus_plus_standardises_each_token():
    # (−1 − (−1.5)) / 0.5 = 1 and (−2 − (−1.5)) / 1 = −0.5; 40 % of 2 tokens rounds down to 0, so 1 token
    assert min_k_plus_plus_score([-1.0, -2.0], [-1.5, -1.5], [0.5, 1.0]) == -0.5


def test_auc_counts_ties_as_half():
    # pairs (3,1) (3,2) (2,1) win, (2,2) ties: 3.5 of 4
    assert auc([3.0, 2.0], [1.0, 2.0]) == 0.875
    assert auc([1.0], [2.0]) == 0.0 and math.isnan(auc([], [1.0]))


def test_privleak():
    assert privleak(0.75, 0.5) == 0.5 and privleak(0.5, 0.5) == 0.0 and privleak(0.25, 0.5) == -0.5


def test_token_statistics_by_hand():
    # position 0 predicts token 1 from a uniform distribution over 4 tokens: log p = −ln 4, mean −ln 4, spread 0;
    # position 1 predicts token 0 from two equally likely tokens (the others impossible): log p = mean = −ln 2
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, -math.inf, -math.inf], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 1, 0]])
    [(logprobs, means, stds)] = token_statistics(logits, labels)
    assert logprobs == pytest.approx([-math.log(4), -math.log(2)])
    assert means == pytest.approx([-math.log(4), -math.log(2)]) and stds == pytest.approx([0.0, 0.0], abs=1e-6)
    # a skewed distribution: p = (0.8, 0.2) → mean 0.8 ln 0.8 + 0.2 ln 0.2, std |ln 0.8 − ln 0.2| · √(0.8 · 0.2)
    logits = torch.tensor([[[math.log(0.8), math.log(0.2)], [0.0, 0.0]]])
    [(logprobs, means, stds)] = token_statistics(logits, torch.tensor([[-100, 1]]))
    assert logprobs == pytest.approx([math.log(0.2)])
    assert means == pytest.approx([0.8 * math.log(0.8) + 0.2 * math.log(0.2)])
    assert stds == pytest.approx([abs(math.log(0.8) - math.log(0.2)) * math.sqrt(0.16)], rel=1e-5)


def test_answer_statistics_match_a_plain_forward_pass(tiny_model, tokenizer):
    """The batched, left-padded statistics equal one unpadded pass per item."""
    import torch

    from unierase.evaluation.mia import token_statistics
    from unierase.evaluation.scoring import answer_token_statistics, split_prompt_answer

    questions = ["Who is author one?", "Where was the second author of many books born?"]
    answers = ["A poet.", "In a small town by the sea, long ago."]
    got = {}
    for idx, items in answer_token_statistics(tiny_model, tokenizer, questions, answers, chat=True, batch_size=2):
        got.update(zip(idx, items))
    for i, (q, a) in enumerate(zip(questions, answers)):
        prompt, answer = split_prompt_answer(tokenizer, q, a, True)
        ids = torch.tensor([prompt + answer])
        labels = ids.clone()
        labels[0, : len(prompt)] = -100
        with torch.no_grad():
            (lp, means, stds), = token_statistics(tiny_model(input_ids=ids).logits, labels)
        assert len(got[i]["logprobs"]) == len(answer)
        torch.testing.assert_close(torch.tensor(got[i]["logprobs"]), torch.tensor(lp), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(got[i]["stds"]), torch.tensor(stds), atol=1e-4, rtol=1e-4)


def test_membership_reports_auc_and_privleak_per_attack():
    from unierase.evaluation.mia import ATTACKS, membership

    def item(logprobs):
        return {"logprobs": logprobs, "means": [-1.0] * len(logprobs), "stds": [1.0] * len(logprobs)}

    members = [item([-0.1, -0.2]), item([-0.3, -0.1])]
    others = [item([-2.0, -3.0]), item([-1.5, -2.5])]
    got = membership(members, ["a b", "c d"], others, ["e f", "g h"], retain_auc={a: 0.5 for a in ATTACKS})
    assert got["auc"] == {a: 1.0 for a in ATTACKS} and got["privleak"] == {a: 1.0 for a in ATTACKS}
    assert membership(members, ["a", "b"], others, ["c", "d"])["privleak"] is None
