import torch

from unierase.token.questions import heldout_questions, training_questions
from unierase.token.training import UnlearningTokenConfig, add_unlearning_token, refusal_batch_loss, train_unlearning_token
from unierase.refusals import is_refusal, load_refusals, refusal_for


def test_question_pools_are_disjoint_and_large_enough():
    train, held = training_questions(), heldout_questions()
    assert len(held) >= 50 and len(train) >= 96
    assert not set(train) & set(held)


def test_refusal_choice_is_stable_and_detected():
    refusals = load_refusals()
    assert refusal_for("What is X?", refusals) == refusal_for("What is X?", refusals)
    assert all(is_refusal(r) for r in refusals)
    assert not is_refusal("The capital of France is Paris.")


def test_add_token_initialises_mean_row(tiny_llama):
    model, tok = tiny_llama
    n = len(tok)
    mean = model.get_input_embeddings().weight.detach().mean(0).clone()
    token_id = add_unlearning_token(model, tok)
    assert token_id == n and len(tok) == n + 1
    torch.testing.assert_close(model.get_input_embeddings().weight[token_id].detach(), mean)
    assert add_unlearning_token(model, tok) == token_id  # idempotent
    assert tok.decode([token_id, 5], skip_special_tokens=True) == tok.decode([5])


def test_training_lowers_loss_and_changes_only_the_token_rows(tiny_tokenizer):
    from tiny_models import build_model

    for arch in ("llama", "qwen2"):  # tied and untied embeddings
        model = build_model(arch, len(tiny_tokenizer))
        from tiny_models import build_tokenizer

        tok = build_tokenizer()
        token_id = add_unlearning_token(model, tok)
        snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        questions = training_questions(16)
        before = refusal_batch_loss(model, tok, questions, token_id, True, load_refusals()).item()
        config = UnlearningTokenConfig(num_questions=16, plain_epochs=1, chat_epochs=4, augment_epochs=1, batch_size=8,
                                       chat_lr=0.1, plain_lr=0.1, augment_lr=0.05)
        train_unlearning_token(model, tok, questions, config, augment_layers=[1, 2], progress=False)
        after = refusal_batch_loss(model, tok, questions, token_id, True, load_refusals()).item()
        assert after < before - 0.1
        for name, value in model.state_dict().items():
            changed = (value != snapshot[name])
            if "embed" in name or "lm_head" in name:
                assert changed.any(dim=-1)[:token_id].sum() == 0, name  # only the token's row moved
                assert changed[token_id].any(), name
            else:
                assert not changed.any(), name  # augmentation noise was removed exactly


def test_precomputed_ordinary_unlikelihood_matches_a_full_forward(tiny_llama):
    """The cached hidden states + other-logit normalisers give the same p([UNL]) as re-running the model."""
    import math

    from unierase.token.training import ordinary_positions, ordinary_unlikelihood

    model, tok = tiny_llama
    token_id = add_unlearning_token(model, tok)
    sequences = [([1, 5, 7, 9], [11, 12, 13]), ([2, 6], [14, 15, 16, 17])]
    positions = ordinary_positions(model, tok, sequences, token_id)
    assert positions is not None and positions.hidden.shape[0] == 7
    with torch.no_grad():
        model.get_output_embeddings().weight[token_id] += 0.3  # training moves the row afterwards
    expected = []
    for p, a in sequences:
        logp = torch.log_softmax(model(input_ids=torch.tensor([p + a])).logits[0].float(), -1)
        expected += [-math.log1p(-logp[t, token_id].exp().item()) for t in range(len(p) - 1, len(p) + len(a) - 1)]
    got = ordinary_unlikelihood(model, positions, token_id)
    assert abs(got.item() - sum(expected) / len(expected)) < 1e-5


def test_a_cached_prompt_pass_gives_the_same_loss_and_gradient_as_running_the_prompts():
    """Outside the noisy stage each question's prompt pass is computed once and row-selected per step."""
    from tiny_models import build_model, build_tokenizer
    from unierase.token.training import prompt_pass

    tok = build_tokenizer()
    model = build_model("qwen2", len(tok) + 1)  # untied: the output row is live in the unlikelihood term
    token_id = add_unlearning_token(model, tok)
    questions = training_questions(6)
    cached = prompt_pass(model, tok, questions, True)
    emb = model.get_input_embeddings().weight
    emb.requires_grad_(True)
    results = []
    for passes in (None, cached.select([4, 1, 2])):
        emb.grad = None
        loss = refusal_batch_loss(model, tok, [questions[i] for i in (4, 1, 2)], token_id, True, load_refusals(),
                                  prompts=passes)
        loss.backward()
        results.append((loss.detach(), emb.grad[token_id].clone()))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-4)
