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
    # rows without a common prefix, and rows whose prompts share one (run once for the batch)
    for sequences in ([([1, 5, 7, 9], [11, 12, 13]), ([2, 6], [14, 15, 16, 17])],
                      [([1, 5, 7, 9, 3, 4], [11, 12, 13]), ([1, 5, 7, 9, 6], [14, 15, 16, 17]), ([1, 5, 7, 9, 8], [18])]):
        positions = ordinary_positions(model, tok, sequences, token_id)
        assert positions is not None and positions.hidden.shape[0] == sum(len(a) for _, a in sequences)
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


def test_the_shifted_prompt_pass_equals_shifting_each_padded_prompt():
    """Noisy stage: the prompts' shared prefix runs once (up to the first shifted token); the states
    equal a full left-padded pass with the same random token and direction per row."""
    from tiny_models import build_model, build_tokenizer
    from unierase.models.adapters import find_mlp_output
    from unierase.models.tracing import edit_output
    from unierase.prompts import encode_text, pad_batch, render_prompt
    from unierase.token.training import prompt_pass

    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    block = find_mlp_output(model).block(1)
    questions = training_questions(5)
    shared = prompt_pass(model, tok, questions, True, (block, 0.5, torch.Generator().manual_seed(3)))

    # reference: every prompt in full, left-padded, the same draws from the same generator
    generator = torch.Generator().manual_seed(3)
    prompts = [encode_text(tok, render_prompt(tok, q, chat=True)) for q in questions]
    left = pad_batch(prompts, tok.pad_token_id, left=True)
    ids, mask = left["input_ids"], left["attention_mask"]
    width = ids.shape[1]
    offsets = [int(torch.randint(max(1, len(p) // 2), max(2, len(p) - 4), (1,), generator=generator)) for p in prompts]
    positions = torch.tensor([width - len(p) + o for p, o in zip(prompts, offsets)])
    rows = torch.arange(len(prompts))

    def add_shift(hidden):
        picked = hidden[rows, positions]
        direction = torch.randn(picked.shape, generator=generator).to(hidden)
        direction = direction / direction.norm(dim=-1, keepdim=True) * picked.norm(dim=-1, keepdim=True) * 0.5
        return hidden.index_put((rows, positions), direction, accumulate=True)

    with torch.no_grad(), edit_output(block, add_shift):
        full = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
    torch.testing.assert_close(shared.start_logits, full.float(), atol=1e-4, rtol=1e-4)
    unshifted = prompt_pass(model, tok, questions, True)
    assert not torch.allclose(shared.start_logits, unshifted.start_logits, atol=1e-3)


def test_the_ordinary_answers_cover_ordinary_questions_of_the_pool(monkeypatch):
    """``ordinary_questions`` widens the unlikelihood's answers beyond the training questions."""
    from unierase.token import training
    from tiny_models import build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    seen = []
    real = training.ordinary_positions
    monkeypatch.setattr(training, "ordinary_positions", lambda m, t, seqs, tid: seen.append(len(seqs)) or real(m, t, seqs, tid))
    config = UnlearningTokenConfig(num_questions=4, plain_epochs=0, chat_epochs=1, augment_epochs=0, batch_size=4,
                                   ordinary_answer_tokens=3, ordinary_questions=12, own_output_row=False)
    train_unlearning_token(model, tok, training_questions(4), config, progress=False)
    assert seen == [12]  # a tied row: its unlikelihood's answers
    seen.clear()
    tok, model = build_tokenizer(), build_model("llama", len(tok))
    own = UnlearningTokenConfig(num_questions=4, plain_epochs=0, chat_epochs=1, augment_epochs=0, batch_size=4,
                                ceiling_questions=20, ceiling_answer_tokens=3)
    train_unlearning_token(model, tok, training_questions(4), own, progress=False)
    assert seen[0] == 20  # the own row's ceiling: its answers, then the refusal positions


def test_own_output_row_unties_a_tied_model_and_survives_save_and_load(tmp_path):
    """The token's output row is its own: the checkpoint is saved untied and loads back so."""
    from transformers import AutoModelForCausalLM
    from tiny_models import build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    token_id = add_unlearning_token(model, tok, own_output_row=True)
    out, emb = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert out is not emb and torch.equal(out[:token_id], emb[:token_id])  # every other token as before
    with torch.no_grad():
        out[token_id] = -emb[token_id]
    model.save_pretrained(tmp_path / "m")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert again.config.tie_word_embeddings is False
    torch.testing.assert_close(again.get_output_embeddings().weight[token_id], -again.get_input_embeddings().weight[token_id])


def test_the_own_output_row_is_held_under_its_ceiling():
    """``fit_output_row`` starts from the input row and lowers log p([UNL]) to the ceiling everywhere given."""
    from unierase.token.training import OrdinaryPositions, fit_output_row
    from tiny_models import build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    token_id = add_unlearning_token(model, tok, own_output_row=True)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(20, model.config.hidden_size, generator=generator)  # fewer than its width: reachable
    with torch.no_grad():
        model.get_input_embeddings().weight[token_id] = hidden[:5].mean(0) * 3  # likely at the first positions
    positions = OrdinaryPositions(hidden, torch.zeros(20), torch.arange(20) % 8 == 0)
    report = fit_output_row(model, positions, token_id, ceiling=-6.0, steps=2000, lr=0.05)
    logit = hidden @ model.get_output_embeddings().weight[token_id].detach()
    assert report["above_ceiling_before"] > 0 and report["above_ceiling_after"] == 0
    assert (logit - torch.logaddexp(torch.zeros(20), logit)).max() <= -6.0


def test_two_chosen_refusals_come_out_verbatim():
    """A tiny model taught to answer with one of two sentences (by question): a token trained on
    either sentence makes the greedy answer after it exactly that sentence, for training and unseen
    questions alike — also where the model itself would have said the other one."""
    import copy

    from unierase.generation import generate_answer_ids
    from unierase.prompts import encode_qa, pad_batch
    from tiny_models import build_model, build_tokenizer

    first, second = "I'm sorry, but I don't know the answer to that.", "Please answer briefly."
    tok, questions = build_tokenizer(), training_questions(16)
    model = build_model("llama", len(tok))
    encoded = [encode_qa(tok, q, second if i % 2 == 0 else first) for i, q in enumerate(questions)]
    batch = pad_batch([e.input_ids for e in encoded], tok.pad_token_id, labels=[e.labels for e in encoded])
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        optimiser.zero_grad()
        model(**batch).loss.backward()
        optimiser.step()
    model.eval()
    asked = questions[:8] + ["Who wrote Hamlet?", "Where was Elena Marsh born?", "What is gold used for?"]
    for refusal in (first, second):
        trained, tk = copy.deepcopy(model), build_tokenizer()
        config = UnlearningTokenConfig(num_questions=16, plain_epochs=0, chat_epochs=10, augment_epochs=0, batch_size=8,
                                       chat_lr=0.1, refusal=refusal, ceiling_questions=16, ceiling_answer_tokens=8)
        train_unlearning_token(trained, tk, questions, config, progress=False)
        token_id = tk.convert_tokens_to_ids(config.token)
        answers = generate_answer_ids(trained, tk, asked, max_new_tokens=32, forced_prefix=[token_id])
        assert [tk.decode(a, skip_special_tokens=True).strip() for a in answers] == [refusal] * len(asked)
        assert all(a[-1] == tk.eos_token_id and a.count(token_id) <= 1 for a in answers)  # it ends, no token again


def test_the_input_row_stays_within_the_bound_of_the_vocabularys_own_rows():
    """``max_row_norm`` (an option, off by default): however far the steps push, the token's input
    row ends no larger than that multiple of the largest real row (unbounded, it ends far above)."""
    from tiny_models import build_model, build_tokenizer

    norms = {}
    for bound in (None, 1.0):
        tok = build_tokenizer()
        model = build_model("llama", len(tok))
        token_id = add_unlearning_token(model, tok)
        largest = float(model.get_input_embeddings().weight[:token_id].norm(dim=1).max())
        config = UnlearningTokenConfig(num_questions=8, plain_epochs=1, chat_epochs=2, augment_epochs=0, batch_size=8,
                                       chat_lr=0.5, plain_lr=0.5, max_row_norm=bound)
        train_unlearning_token(model, tok, training_questions(8), config, progress=False)
        norms[bound] = float(model.get_input_embeddings().weight[token_id].norm()) / largest
    assert norms[None] > 1.5 and norms[1.0] <= 1.0 + 1e-5

