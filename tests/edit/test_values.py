import torch

from tiny_models import build_model, build_tokenizer
from unierase.edit.prompts import build_edit_prompts
from unierase.edit.values import _Group


def test_group_scores_the_target_and_its_continuation_like_a_full_forward():
    """Prefix cache + suffix + kept logit columns give the same −log p as one plain forward pass."""
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    questions = ["What is the capital of France?", "Who wrote Hamlet?"]
    prompts = [build_edit_prompts(tok, q, i, len(q) - 1, 0)[0] for i, q in enumerate(questions)]
    target, tails = 7, [[7, 11, 12, 13], [7, 14]]
    group = _Group(model, [0, 1], prompts, tok.pad_token_id, torch.device("cpu"), tails)
    with torch.no_grad():
        logits = group.logits()
        first, tail = group.target_nll(logits, target), group.tail_nll(logits)
        for row, (p, t) in enumerate(zip(prompts, tails)):
            full = torch.log_softmax(model(input_ids=torch.tensor([p.input_ids + t])).logits[0].float(), -1)
            n = len(p.input_ids)
            assert abs(first[row].item() + full[n - 1, target].item()) < 1e-4
            expected = -sum(full[n - 1 + j, t[j]].item() for j in range(1, len(t))) / (len(t) - 1)
            assert abs(tail[row].item() - expected) < 1e-4


def test_refusal_key_moments_cover_every_answer_position():
    from unierase.edit.stats import accumulate_refusal_key_moments
    from unierase.models.adapters import find_mlp_output
    from unierase.token.training import add_unlearning_token

    tok = build_tokenizer()
    model = build_model("llama", len(tok) + 1)
    token_id = add_unlearning_token(model, tok)
    adapter = find_mlp_output(model)
    moments, count = accumulate_refusal_key_moments(model, tok, adapter, [1, 2], token_id, num_questions=5)
    assert count > 5 * 4  # [UNL] + refusal + [UNL] + end of turn per question
    for m in moments.values():
        assert torch.allclose(m, m.T) and torch.linalg.eigvalsh(m).min() > -1e-6 * m.diagonal().max()
