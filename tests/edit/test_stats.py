"""Preserved-key statistics: answer-position moments, the cache round trip, C₀ per family."""

import torch

from tiny_models import build_model, build_tokenizer
from unierase.edit.stats import (KeyStatistics, StatisticsCache, accumulate_answer_key_moments,
                                 answer_position_moments, get_key_statistics, largest_eigenvalue, null_space_basis)
from unierase.edit.keys import position_ids
from unierase.models.adapters import find_mlp_output
from unierase.models.tracing import trace


def test_answer_position_moments_sum_the_answer_keys_only():
    """Σ k kᵀ over exactly the answer positions, equal to a plain unpadded forward's keys."""
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    adapter = find_mlp_output(model)
    texts = [([5, 6, 7, 8], [9, 10, 11]), ([12, 13], [14, 15, 16, 17, 18])]
    moments, count = answer_position_moments(model, tok, adapter, [1], texts, batch_size=2)
    assert count == 3 + 5
    expected = torch.zeros_like(moments[1])
    for prompt, answer in texts:
        ids = torch.tensor([prompt + answer])
        with trace(adapter.mlp_output(1), keep_input=True) as rec, torch.no_grad():
            model(input_ids=ids, position_ids=position_ids(torch.ones_like(ids)))
        keys = rec.input[0, len(prompt):].to(torch.float64)
        expected += keys.T @ keys
    torch.testing.assert_close(moments[1], expected, rtol=1e-4, atol=1e-6)


def test_own_answer_moments_are_computed_once_and_cached(tmp_path):
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    adapter = find_mlp_output(model)
    moments, count = accumulate_answer_key_moments(model, tok, adapter, [1], num_questions=4, max_new_tokens=5)
    assert 0 < count <= 4 * 6 and moments[1].shape == (adapter.key_dim(1),) * 2
    stats, seconds = get_key_statistics(model, tok, adapter, [1], fingerprint="f", cache_dir=tmp_path, num_tokens=500,
                                        progress=False)
    assert seconds > 0 and stats.answer_count > 0
    again, seconds = get_key_statistics(model, tok, adapter, [1], fingerprint="f", cache_dir=tmp_path, num_tokens=500,
                                        progress=False)
    assert seconds == 0.0 and again.answer_count == stats.answer_count
    torch.testing.assert_close(again.answer_moments[1], stats.answer_moments[1])
    # a C₀ with the answer keys differs from one without them
    assert not torch.allclose(stats.covariance(1), stats.covariance(1, answer_weight=1.0))
    assert StatisticsCache(tmp_path).load("f", stats.corpus, 500, [1]) is not None


def test_sequence_moments_equal_a_forward_pass_per_sequence():
    """Batching by length and running a batch's shared prefix once (weighted by its rows) is exact."""
    from unierase.edit.stats import sequence_moments

    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    adapter = find_mlp_output(model)
    shared = [5, 6, 7, 8, 9, 10, 11]
    sequences = [shared + [12, 13, 14], shared + [15], [20, 21, 22, 23, 24, 25], shared + [16, 17],
                 [30, 31], shared + [18, 19, 20, 21, 22]]
    moments, count = sequence_moments(model, adapter, [1, 2], sequences, tok.pad_token_id, batch_size=3)
    assert count == sum(map(len, sequences))
    for layer in (1, 2):
        expected = torch.zeros_like(moments[layer])
        for seq in sequences:
            with trace(adapter.mlp_output(layer), keep_input=True) as rec, torch.no_grad():
                model(input_ids=torch.tensor([seq]))
            keys = rec.input[0].to(torch.float64)
            expected += keys.T @ keys
        torch.testing.assert_close(moments[layer], expected, rtol=1e-4, atol=1e-5)


def test_largest_eigenvalue_matches_eigh():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(40, 40, generator=g, dtype=torch.float64)
    psd = a @ a.T
    assert abs(largest_eigenvalue(psd) - torch.linalg.eigvalsh(psd).max().item()) < 1e-6 * largest_eigenvalue(psd)
    assert largest_eigenvalue(torch.zeros(3, 3, dtype=torch.float64)) == 1.0


def test_per_family_scaling_keeps_a_small_family_protected():
    # corpus keys span e0 at unit scale; refusal keys span e1 at 1e6: jointly, e0 falls under 1e-2 · λ_max
    corpus = torch.diag(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    refusal = torch.diag(torch.tensor([0.0, 1e6, 0.0], dtype=torch.float64))
    stats = KeyStatistics(moments={0: corpus}, count=1, corpus="c", refusal_moments={0: refusal}, refusal_count=1)
    joint = null_space_basis(stats.covariance(0, refusal_weight=1.0), relative_threshold=1e-2)
    family = null_space_basis(stats.covariance(0, refusal_weight=1.0, per_family=True), relative_threshold=1e-2)
    assert joint.shape[1] == 2  # e0 and e2 free: the corpus direction is lost
    assert family.shape[1] == 1 and abs(family[2, 0].item()) == 1.0  # only e2 free


def test_rare_name_moments_cover_every_answer_position():
    from unierase.edit.corpus import rare_name_answers
    from unierase.edit.stats import accumulate_rare_name_key_moments
    from unierase.prompts import answer_separator, has_chat_template

    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    adapter = find_mlp_output(model)
    moments, count = accumulate_rare_name_key_moments(model, tok, adapter, [1], 6)
    chat = has_chat_template(tok)
    expected = sum(len(tok(answer_separator(chat) + a, add_special_tokens=False)["input_ids"])
                   for _, a in rare_name_answers(6))
    assert count == expected and moments[1].shape == (adapter.key_dim(1),) * 2
    assert torch.linalg.matrix_rank(moments[1]) > 0
    stats = KeyStatistics(moments={1: torch.eye(adapter.key_dim(1), dtype=torch.float64)}, count=1, corpus="c",
                          rare_name_moments=moments, rare_name_count=count)
    torch.testing.assert_close(stats.covariance(1, rare_name_weight=2.0),
                               torch.eye(adapter.key_dim(1), dtype=torch.float64) + 2.0 * moments[1] / count)
