import pytest
import torch

from tiny_models import ARCHITECTURES, tiny_edit_setup
from unierase.edit.values import KEY, LAST, PromptGroup, ValueConfig, compute_target_values

# keyed on the entity, with question words after it (the part a cheap step leaves stale)
QUESTIONS = ["Who wrote Hamlet in the year of the plague?", "Which river flows through Paris and its suburbs?"]
KEY_ENDS = [q.index(name) + len(name) for q, name in zip(QUESTIONS, ("Hamlet", "Paris"))]


def _setup(arch="llama"):
    from unierase.edit.prompts import build_edit_prompts

    tok, model, adapter, _ = tiny_edit_setup(arch, num_prefixes=0)
    prompts = [build_edit_prompts(tok, q, i, end, 0)[0] for i, (q, end) in enumerate(zip(QUESTIONS, KEY_ENDS))]
    # δ at block 1's output: the words' states in block 3 depend on it (through block 2's attention)
    group = PromptGroup(model, [0, 1], prompts, tok.pad_token_id, torch.device("cpu"), [[7, 11, 12], [7, 14]], adapter, 1)
    return model, group


def _adding(delta):
    def add(hidden):
        return hidden.index_put((torch.arange(2), torch.zeros(2, dtype=torch.long)), delta.to(hidden.dtype), accumulate=True)
    return add


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_right_after_a_refresh_a_cheap_step_gives_the_exact_logits(arch):
    model, group = _setup(arch)
    assert group.use_stale_context(), f"{arch}: no stale context"
    torch.manual_seed(1)
    delta = torch.randn(2, model.config.hidden_size)
    with torch.no_grad():
        exact = group.logits(_adding(delta))  # refreshes the words' states (and checks the cheap step once)
        assert group.stale is not None, f"{arch}: the cheap step did not reproduce the exact one"
        cheap = group.logits(_adding(delta), stale=True)
    torch.testing.assert_close(cheap, exact, atol=1e-4, rtol=1e-4)


def test_a_cheap_step_keeps_the_words_from_the_last_refresh():
    """With δ moved since the refresh, the key token's own logits follow δ exactly, while the answer
    position reads the words as they were: it differs from an exact step, and gradients still flow."""
    model, group = _setup()
    group.use_stale_context()
    torch.manual_seed(1)
    old, new = torch.randn(2, model.config.hidden_size), torch.randn(2, model.config.hidden_size)
    with torch.no_grad():
        group.logits(_adding(old))
    new.requires_grad_(True)
    cheap = group.logits(_adding(new), stale=True)
    with torch.no_grad():
        exact = PromptGroup.logits(group, _adding(new.detach()))  # refreshes at `new`: measured after `cheap`
    torch.testing.assert_close(cheap[:, KEY].detach(), exact[:, KEY], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(cheap[:, LAST].detach(), exact[:, LAST], atol=1e-3)
    (grad,) = torch.autograd.grad(group.target_nll(cheap, 7).sum(), new)
    assert grad.abs().sum() > 0


def test_a_question_without_words_after_its_key_runs_exact_steps():
    from unierase.edit.prompts import build_edit_prompts

    tok, model, adapter, _ = tiny_edit_setup(num_prefixes=0)
    prompts = [build_edit_prompts(tok, q, i, len(q), 0)[0] for i, q in enumerate(QUESTIONS)]  # key: the "?"
    group = PromptGroup(model, [0, 1], prompts, tok.pad_token_id, torch.device("cpu"), [[7, 11], [7, 14]], adapter, 1)
    assert not group.use_stale_context()


def test_values_with_cheap_steps_move_the_target_as_exact_steps_do(monkeypatch):
    """``context_refresh`` 3 on a tiny model: every step after the first is cheap, and −log p(target)
    falls about as far as with exact steps."""
    from unierase.edit import stale_context
    from unierase.edit.prompts import build_edit_prompts

    tok, model, adapter, _ = tiny_edit_setup(num_prefixes=0)
    prompts = [build_edit_prompts(tok, q, i, end, 0)[0] for i, (q, end) in enumerate(zip(QUESTIONS, KEY_ENDS))]
    cheap_steps = []
    original = stale_context.StaleContext.logits
    monkeypatch.setattr(stale_context.StaleContext, "logits",
                        lambda self, *a: cheap_steps.append(1) or original(self, *a))
    final = {}
    for refresh in (1, 3):
        config = ValueConfig(steps=9, lr=1.0, clamp_factor=8.0, stop_loss=0.0, weight_decay=0.0, kl_weight=0.0,
                             continuation_weight=0.0, context_refresh=refresh)
        _, _, report = compute_target_values(model, adapter, 1, prompts, 2, 7, tok.pad_token_id, config, progress=False)
        final[refresh] = sum(report.final_nll) / 2
        initial = sum(report.initial_nll) / 2
        assert final[refresh] < initial - 0.5, (refresh, report)
    assert len(cheap_steps) >= 8  # every step after the first (+ the one check after it)
    assert abs(final[3] - final[1]) < 0.25 * (initial - final[1]), final


def test_context_refresh_must_be_positive():
    from unierase.storage import UniEraseError

    with pytest.raises(UniEraseError, match="context_refresh"):
        ValueConfig(context_refresh=0)


def test_a_group_whose_cheap_step_fails_the_check_stays_exact_without_trying_again(monkeypatch, caplog):
    from unierase.edit import stale_context

    model, group = _setup()
    monkeypatch.setattr(stale_context.StaleContext, "logits", lambda self, group, edit: group.base_logits * 0)
    delta = torch.zeros(2, model.config.hidden_size)
    with torch.no_grad():
        for _ in range(3):
            group.use_stale_context()
            group.logits(_adding(delta))
            group.logits(_adding(delta), stale=True)
    assert group.stale is None and not group.use_stale_context()
    assert sum("stale" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_refreshing_the_words_alone_gives_the_exact_step(arch):
    """``refresh_words`` (the key token and the words only, no gradient) leaves the words' states an
    exact step at the same δ would: a cheap step right after it gives the exact logits."""
    model, group = _setup(arch)
    group.use_stale_context()
    torch.manual_seed(2)
    old, new = torch.randn(2, model.config.hidden_size), torch.randn(2, model.config.hidden_size)
    with torch.no_grad():
        group.logits(_adding(old))  # the first exact step: states at `old`, the cheap step checked
        group.stale.refresh_words(group, _adding(new))
        cheap = group.logits(_adding(new), stale=True)
        exact = PromptGroup.logits(group, _adding(new))
    torch.testing.assert_close(cheap, exact, atol=1e-4, rtol=1e-4)
