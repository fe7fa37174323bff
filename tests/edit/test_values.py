import dataclasses

import torch

from tiny_models import build_model, build_tokenizer
from unierase.edit.prompts import build_edit_prompts
from unierase.edit.values import PromptGroup


def test_group_scores_the_target_and_its_continuation_like_a_full_forward():
    """Prefix cache + suffix + per-row logit columns give the same −log p as one plain forward pass."""
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    questions = ["What is the capital of France?", "Who wrote Hamlet?"]
    prompts = [build_edit_prompts(tok, q, i, len(q) - 1, 0)[0] for i, q in enumerate(questions)]
    target, tails = 7, [[7, 11, 12, 13], [7, 14]]
    group = PromptGroup(model, [0, 1], prompts, tok.pad_token_id, torch.device("cpu"), tails)
    with torch.no_grad():
        logits = group.logits()
        first, tail = group.target_nll(logits, target), group.tail_nll(logits)
        for row, (p, t) in enumerate(zip(prompts, tails)):
            full = torch.log_softmax(model(input_ids=torch.tensor([p.input_ids + t])).logits[0].float(), -1)
            n = len(p.input_ids)
            assert abs(first[row].item() + full[n - 1, target].item()) < 1e-4
            expected = -sum(full[n - 1 + j, t[j]].item() for j in range(1, len(t))) / (len(t) - 1)
            assert abs(tail[row].item() - expected) < 1e-4


def test_the_banned_term_scores_the_refusal_start_with_the_target_masked_out():
    """``banned_nll``: −log p(first continuation token) at the last prompt position once the target
    token is removed from the distribution, as a decode with the target banned would see it."""
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    questions = ["What is the capital of France?", "Who wrote Hamlet?"]
    prompts = [build_edit_prompts(tok, q, i, len(q) - 1, 0)[0] for i, q in enumerate(questions)]
    target, tails = 7, [[7, 11, 12], [7, 14]]
    group = PromptGroup(model, [0, 1], prompts, tok.pad_token_id, torch.device("cpu"), tails)
    with torch.no_grad():
        banned = group.banned_nll(group.logits(), target)
        for row, (p, t) in enumerate(zip(prompts, tails)):
            last = model(input_ids=torch.tensor([p.input_ids])).logits[0, -1].float()
            last[target] = float("-inf")
            assert abs(banned[row].item() + torch.log_softmax(last, -1)[t[1]].item()) < 1e-4


def test_tail_greedy_says_whether_the_scored_continuation_is_the_greedy_one():
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    questions = ["What is the capital of France?", "Who wrote Hamlet?"]
    prompts = [build_edit_prompts(tok, q, i, len(q) - 1, 0)[0] for i, q in enumerate(questions)]
    with torch.no_grad():  # row 0's tail is its own greedy continuation, row 1's is not
        greedy = []
        ids = list(prompts[0].input_ids)
        for _ in range(3):
            greedy.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            ids.append(greedy[-1])
        last1 = model(input_ids=torch.tensor([prompts[1].input_ids])).logits[0, -1]
        wrong = int(last1.argsort()[0])
        tails = [greedy, [int(last1.argmax()), wrong]]
        group = PromptGroup(model, [0, 1], prompts, tok.pad_token_id, torch.device("cpu"), tails)
        assert group.tail_greedy(group.logits()).tolist() == [True, False]


def _optimised(config, refusal, target=7):
    """δ for two questions on a tiny model (key token = each question's last character) under
    ``config``, and the logits of their plain prompts with it, the refusal teacher-forced."""
    from unierase.edit.values import compute_target_values
    from unierase.models.adapters import find_mlp_output

    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    adapter = find_mlp_output(model)
    questions = ["What is the capital of France?", "Who wrote Hamlet?"]
    prompts = [build_edit_prompts(tok, q, i, len(q) - 1, 0)[0] for i, q in enumerate(questions)]
    z, h0, report = compute_target_values(model, adapter, 1, prompts, 2, target, tok.pad_token_id, config,
                                          progress=False, continuations=refusal)
    group = PromptGroup(model, [0, 1], prompts, tok.pad_token_id, torch.device("cpu"), [[target] + r for r in refusal],
                        adapter, 1)
    with torch.no_grad():
        moved = group.logits(lambda hidden: hidden.index_put(
            (torch.arange(2), torch.zeros(2, dtype=torch.long)), (z - h0).T.to(hidden.dtype), accumulate=True))
    return report, group, moved


def test_with_greedy_continuation_a_request_converges_only_once_its_refusal_is_greedy():
    """Loose stop criteria converge every request at once; with ``greedy_continuation`` a request whose
    scored continuation is not its greedy one under its δ does not count as converged."""
    from unierase.edit.values import ValueConfig

    converged = {}
    for flag in (False, True):
        config = ValueConfig(steps=2, lr=0.1, stop_loss=100.0, continuation_stop=100.0, greedy_continuation=flag)
        report, group, moved = _optimised(config, [[11, 12, 13], [14, 15, 16]])
        greedy = group.tail_greedy(moved).tolist()
        converged[flag] = report.converged
        if flag:
            assert all(g for c, g in zip(report.converged, greedy) if c), (report.converged, greedy)
    assert converged[False] == [True, True] and converged[True] != [True, True], converged


def test_the_banned_term_makes_the_refusal_the_runner_up():
    """With ``banned_weight`` the optimised δ leaves the refusal's first token likelier once the target
    is banned than without the term (same steps, same start)."""
    from unierase.edit.values import ValueConfig

    runner_up = {}
    for weight in (0.0, 5.0):
        config = ValueConfig(steps=8, lr=0.5, clamp_factor=2.0, stop_loss=0.0, banned_weight=weight)
        _, group, moved = _optimised(config, [[11, 12], [14, 15]])
        runner_up[weight] = group.banned_nll(moved, 7).mean().item()
    assert runner_up[5.0] < runner_up[0.0], runner_up


def test_the_margin_term_makes_the_scored_continuation_lead_its_rivals():
    """With ``continuation_margin_weight`` the optimised δ leaves the refusal's tokens further ahead of
    their rivals than the mean −log p alone does (same steps, same start)."""
    from unierase.edit.values import ValueConfig

    shortfall = {}
    for weight in (0.0, 5.0):
        config = ValueConfig(steps=8, lr=0.5, clamp_factor=2.0, stop_loss=0.0, greedy_continuation=False,
                             continuation_margin_weight=weight, continuation_margin=4.0)
        _, group, moved = _optimised(config, [[11, 12, 13], [14, 15, 16]])
        shortfall[weight] = group.tail_shortfall(moved, 4.0).sum().item()
    assert shortfall[5.0] < shortfall[0.0], shortfall


def test_the_tail_shortfall_is_each_tokens_missing_lead_over_its_strongest_rival():
    """``tail_shortfall``: Σ max(0, margin − (logit of the continuation token − the largest other
    logit)) over the scored tokens, as read from one plain forward pass."""
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    questions = ["What is the capital of France?", "Who wrote Hamlet?"]
    prompts = [build_edit_prompts(tok, q, i, len(q) - 1, 0)[0] for i, q in enumerate(questions)]
    tails = [[7, 11, 12, 13], [7, 14]]
    group = PromptGroup(model, [0, 1], prompts, tok.pad_token_id, torch.device("cpu"), tails)
    with torch.no_grad():
        shortfall = group.tail_shortfall(group.logits(), 2.0)
        for row, (p, t) in enumerate(zip(prompts, tails)):
            full = model(input_ids=torch.tensor([p.input_ids + t])).logits[0].float()
            n, expected = len(p.input_ids), 0.0
            for j in range(1, len(t)):
                logits = full[n - 1 + j].clone()
                chosen = logits[t[j]].item()
                logits[t[j]] = float("-inf")
                expected += max(0.0, 2.0 - (chosen - logits.max().item()))
            assert abs(shortfall[row].item() - expected) < 1e-3


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


def test_a_request_that_reached_its_target_leaves_the_batch_with_its_delta_kept():
    """Per-request stopping: a request already below ``stop_loss`` keeps δ = 0 and stops after one
    step while the other goes on optimising."""
    from unierase.edit.values import ValueConfig, compute_target_values
    from unierase.models.adapters import find_mlp_output

    torch.manual_seed(0)
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    adapter = find_mlp_output(model)
    questions = ["What is the capital of France?", "Who wrote Hamlet?"]
    prompts = [build_edit_prompts(tok, q, i, len(q) - 1, 0)[0] for i, q in enumerate(questions)]
    with torch.no_grad():
        logp = [torch.log_softmax(model(input_ids=torch.tensor([p.input_ids])).logits[0, -1].float(), -1) for p in prompts]
    target = int(logp[0].argmax())  # likely for request 0, much less so for request 1
    gap = float(logp[0][target] - logp[1][target])
    assert gap > 0.05
    stop = float(-logp[0][target]) + gap / 2  # between the two requests' starting losses
    config = ValueConfig(steps=4, lr=0.5, stop_loss=stop, continuation_weight=0.0)
    z, h0, report = compute_target_values(model, adapter, 1, prompts, 2, target, tok.pad_token_id, config, progress=False)
    assert report.initial_nll[0] < stop < report.initial_nll[1], report
    assert report.steps_per_request[0] == 1 and report.delta_norm_ratio[0] == 0.0
    torch.testing.assert_close(z[:, 0], h0[:, 0])
    assert report.steps_per_request[1] > 1 and report.delta_norm_ratio[1] > 0


def test_a_warm_start_at_a_reached_target_keeps_it_and_stops_after_one_step():
    """A further edit pass starts δ at the previous pass's target: a request that target still serves
    leaves after one step with exactly that target; one with no start target optimises from δ = 0."""
    from tiny_models import tiny_edit_setup
    from unierase.edit.values import ValueConfig, compute_target_values

    torch.manual_seed(0)
    tok, model, adapter, prompts = tiny_edit_setup(num_prefixes=0)
    config = ValueConfig(steps=10, lr=0.5, stop_loss=0.0, continuation_weight=0.0, clamp_factor=10.0, weight_decay=0.0,
                         kl_weight=0.0)
    z, h0, first = compute_target_values(model, adapter, 1, prompts, 2, 7, tok.pad_token_id, config, progress=False)
    start = min(first.initial_nll)
    assert first.final_nll[0] + 0.2 < start, first
    config.stop_loss = (first.final_nll[0] + start) / 2  # reached at z, by neither request at δ = 0
    again, h0_again, warm = compute_target_values(model, adapter, 1, prompts, 2, 7, tok.pad_token_id, config,
                                                  progress=False, start_targets=[z[:, 0], None])
    torch.testing.assert_close(h0_again, h0)
    assert warm.steps_per_request[0] == 1 and warm.initial_nll[0] < config.stop_loss, warm
    torch.testing.assert_close(again[:, 0], z[:, 0])
    assert warm.initial_nll[1] == first.initial_nll[1] and warm.steps_per_request[1] > 1


def test_a_kept_target_is_neither_evaluated_nor_moved_and_the_others_optimise_alone(monkeypatch):
    """``keep_targets``: a request whose target converged in an earlier pass keeps it (within the
    bound) and its prompts leave the optimisation; the other requests optimise as they would alone."""
    from tiny_models import tiny_edit_setup
    from unierase.edit import values as values_module
    from unierase.edit.values import ValueConfig, compute_target_values

    torch.manual_seed(0)
    tok, model, adapter, prompts = tiny_edit_setup(num_prefixes=1)
    config = ValueConfig(steps=4, lr=0.5, stop_loss=0.0, continuation_weight=0.0, clamp_factor=10.0, weight_decay=0.0,
                         kl_weight=0.0)
    z, h0, _ = compute_target_values(model, adapter, 1, prompts, 2, 7, tok.pad_token_id, config, progress=False)
    start = [z[:, 0] + 0.5, None]
    again, h0_again, report = compute_target_values(model, adapter, 1, prompts, 2, 7, tok.pad_token_id, config,
                                                    progress=False, start_targets=start, keep_targets=[True, False])
    torch.testing.assert_close(h0_again, h0)
    torch.testing.assert_close(again[:, 0], start[0])
    assert report.steps_per_request[0] == 0 and report.initial_nll[0] is None and report.converged == [True, False]
    # request 1 alone (its own prompts only) reaches the same target
    ones = [dataclasses.replace(p, request_index=0) for p in prompts if p.request_index == 1]
    z_alone, _, _ = compute_target_values(model, adapter, 1, ones, 1, 7, tok.pad_token_id, config, progress=False)
    torch.testing.assert_close(again[:, 1], z_alone[:, 0], atol=1e-4, rtol=1e-4)

    # every target kept: the previous pass's plain group gives the values, no group is built or run
    group = values_module.plain_prompt_group(model, adapter, 1, prompts, 7, tok.pad_token_id, config)
    monkeypatch.setattr(values_module.PromptGroup, "__init__", lambda *a, **k: (_ for _ in ()).throw(AssertionError("built a group")))
    monkeypatch.setattr(values_module.PromptGroup, "logits", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran a group")))
    kept, _, report = compute_target_values(model, adapter, 1, prompts, 2, 7, tok.pad_token_id, config, progress=False,
                                            start_targets=[z[:, 0], z[:, 1]], keep_targets=[True, True], plain_group=group)
    torch.testing.assert_close(kept, z)
    assert report.steps == 0 and report.converged == [True, True]


def test_a_group_subset_scores_like_a_group_built_from_those_rows():
    """Requests leaving the optimisation: row-selecting the cached prefix equals rebuilding it."""
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    questions = ["What is the capital of France?", "Who wrote Hamlet?", "Where is the Eiffel Tower?"]
    prompts = [build_edit_prompts(tok, q, i, len(q) - 1, 0)[0] for i, q in enumerate(questions)]
    tails = [[7, 11, 12, 13], [7, 14], [7, 15, 16]]
    group = PromptGroup(model, [0, 1, 2], prompts, tok.pad_token_id, torch.device("cpu"), tails)
    sub = group.subset([0, 2])
    fresh = PromptGroup(model, [0, 2], prompts, tok.pad_token_id, torch.device("cpu"), [tails[0], tails[2]])
    with torch.no_grad():
        a, b = sub.logits(), fresh.logits()
        torch.testing.assert_close(sub.target_nll(a, 7), fresh.target_nll(b, 7), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(sub.tail_nll(a), fresh.tail_nll(b), atol=1e-4, rtol=1e-4)
    assert sub.members.tolist() == [0, 2] and group.members.tolist() == [0, 1, 2]


def test_the_value_optimisation_leaves_weights_without_gradients_and_restores_their_flags():
    from tiny_models import tiny_edit_setup
    from unierase.edit.values import ValueConfig, compute_target_values

    tok, model, adapter, prompts = tiny_edit_setup(num_prefixes=1)
    compute_target_values(model, adapter, 1, prompts, 2, 7, tok.pad_token_id, ValueConfig(steps=2), progress=False,
                          continuations=[[11, 12], [13]])
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


import pytest

from tiny_models import ARCHITECTURES


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_replaying_the_lower_blocks_gives_the_full_pass_logits_and_gradient(arch):
    """Blocks up to the value layer are skipped (their output replayed) — same logits, same ∂/∂δ."""
    from tiny_models import tiny_edit_setup

    tok, model, adapter, prompts = tiny_edit_setup(arch, num_prefixes=0)
    group = PromptGroup(model, [0, 1], prompts, tok.pad_token_id, torch.device("cpu"), [[7, 11, 12], [7, 14]], adapter, 2)
    assert group.replay, f"{arch}: replay fell back to full passes"
    torch.manual_seed(1)
    delta = torch.randn(2, model.config.hidden_size, requires_grad=True)

    def add(hidden):
        return hidden.index_put((torch.arange(2), torch.zeros(2, dtype=torch.long)), delta.to(hidden.dtype), accumulate=True)

    results = []
    for replay in (True, False):
        group.replay = replay
        loss = group.tail_nll(group.logits(add)).sum() + group.target_nll(group.logits(add), 7).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        results.append((loss.detach(), grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-4, rtol=1e-4)


def test_the_plain_group_after_a_pass_gives_the_check_and_starts_the_next_pass(monkeypatch):
    """``plain_prompt_group``: first tokens as a fresh greedy check, values as a key pass; a further
    pass on the pending requests reuses its rows and finds the same targets as a fresh build."""
    from tiny_models import tiny_edit_setup
    from unierase.edit import values
    from unierase.edit.keys import request_keys_and_values
    from unierase.edit.prompts import build_edit_prompts
    from unierase.edit.values import ValueConfig, compute_target_values, plain_prompt_group
    from unierase.generation import first_token_ids

    questions = ["What is the capital of France?", "Who wrote Hamlet?", "Where is the Eiffel Tower?"]
    tok, model, adapter, prompts = tiny_edit_setup(num_prefixes=1, questions=questions)
    config, continuations = ValueConfig(steps=3, lr=0.5), [[11, 12], [13], [14, 15, 16]]
    after = plain_prompt_group(model, adapter, 2, prompts, 7, tok.pad_token_id, config, continuations)
    assert after.first_tokens() == first_token_ids(model, tok, questions)
    _, current = request_keys_and_values(model, adapter, 1, 2, prompts, 3, tok.pad_token_id)
    torch.testing.assert_close(after.values(), current, atol=1e-5, rtol=1e-5)

    pending = [0, 2]  # the next pass's prompts: these requests, numbered 0 and 1
    again = [p for j, i in enumerate(pending) for p in build_edit_prompts(tok, questions[i], j, len(questions[i]) - 1, 1)]
    fresh = compute_target_values(model, adapter, 2, again, 2, 7, tok.pad_token_id, config, progress=False,
                                  continuations=[continuations[i] for i in pending])
    built = []
    monkeypatch.setattr(values.PromptGroup, "__init__", _counting(values.PromptGroup.__init__, built))
    reused = compute_target_values(model, adapter, 2, again, 2, 7, tok.pad_token_id, config, progress=False,
                                   continuations=[continuations[i] for i in pending], plain_group=after.subset(pending))
    assert len(built) == 1  # only the prefixed variants' group was built
    for a, b in zip(fresh[:2], reused[:2]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert fresh[2].steps_per_request == reused[2].steps_per_request


def _counting(init, calls):
    def counted(self, *args, **kwargs):
        calls.append(args)
        return init(self, *args, **kwargs)
    return counted


def test_a_group_without_base_logits_records_the_same_block_output():
    """The prefixed variants' group only needs block ``z``'s output: the pass stops there."""
    from tiny_models import tiny_edit_setup

    tok, model, adapter, prompts = tiny_edit_setup(num_prefixes=2)
    rows = [i for i, p in enumerate(prompts) if p.variant != 0]
    full = PromptGroup(model, rows, prompts, tok.pad_token_id, torch.device("cpu"), None, adapter, 1)
    short = PromptGroup(model, rows, prompts, tok.pad_token_id, torch.device("cpu"), None, adapter, 1,
                        base_logits=False, replay=full.replay)
    assert short.base_logits is None and full.base_logits is not None and short.replay == full.replay
    torch.testing.assert_close(short.block_out, full.block_out)


def _three_requests():
    """A tiny model and the plain prompts of three requests keyed at their last question token."""
    from unierase.models.adapters import find_mlp_output

    torch.manual_seed(0)
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    adapter = find_mlp_output(model)
    questions = ["What is the capital of France?", "Who wrote Hamlet?", "Where was Elena Marsh born?"]
    prompts = [build_edit_prompts(tok, q, i, len(q) - 1, 0)[0] for i, q in enumerate(questions)]
    return tok, model, adapter, prompts


def test_requests_of_one_group_share_one_delta_and_leave_together():
    """Entity scope: z_r − h₀_r is the same δ for every request of a group, and a group whose
    one request already met the stop criterion goes on optimising for the other."""
    from unierase.edit.values import ValueConfig, compute_target_values

    tok, model, adapter, prompts = _three_requests()
    with torch.no_grad():
        logp = [torch.log_softmax(model(input_ids=torch.tensor([p.input_ids])).logits[0, -1].float(), -1) for p in prompts]
    target = int(logp[0].argmax())
    stop = float(-logp[0][target]) + 0.01  # request 0 meets it at once, request 1 (same group) does not
    config = ValueConfig(steps=4, lr=0.5, stop_loss=stop, continuation_weight=0.0)
    z, h0, report = compute_target_values(model, adapter, 1, prompts, 3, target, tok.pad_token_id, config, progress=False,
                                          groups=[0, 0, 1])
    move = z - h0
    torch.testing.assert_close(move[:, 0], move[:, 1])
    assert float(move[:, 0].norm()) > 0  # it moved for request 1's sake
    assert report.steps_per_request[0] == report.steps_per_request[1] > 1
    assert not torch.allclose(move[:, 2], move[:, 0])


def test_a_request_not_optimised_receives_its_groups_delta():
    from unierase.edit.values import ValueConfig, compute_target_values

    tok, model, adapter, prompts = _three_requests()
    config = ValueConfig(steps=3, lr=0.5, stop_loss=0.0, continuation_weight=0.0)
    z, h0, report = compute_target_values(model, adapter, 1, prompts, 3, 7, tok.pad_token_id, config, progress=False,
                                          groups=[0, 0, 0], optimise=[True, False, True])
    move = z - h0
    torch.testing.assert_close(move[:, 1], move[:, 0])
    assert report.steps_per_request == [3, 0, 3] and report.initial_nll[1] is None and not report.converged[1]
    _, h0_all, _ = compute_target_values(model, adapter, 1, prompts, 3, 7, tok.pad_token_id, config, progress=False,
                                         groups=[0, 0, 0])
    torch.testing.assert_close(h0, h0_all)  # a rider's value, from a pass that stops at the edited layer
    with pytest.raises(ValueError, match="at least one optimised"):
        compute_target_values(model, adapter, 1, prompts, 3, 7, tok.pad_token_id, config, progress=False,
                              groups=[0, 1, 1], optimise=[False, True, True])


def test_a_minibatch_takes_a_groups_questions_in_turn_and_the_group_leaves_once_each_met_the_target():
    from unierase.edit.values import ValueConfig, compute_target_values

    tok, model, adapter, prompts = _three_requests()
    config = ValueConfig(steps=5, lr=0.5, stop_loss=1e9, continuation_weight=0.0)  # every run meets the target
    z, h0, report = compute_target_values(model, adapter, 1, prompts, 3, 7, tok.pad_token_id, config, progress=False,
                                          groups=[0, 0, 0], minibatch=1)
    assert report.steps == 3 and report.steps_per_request == [1, 2, 3]  # one question per step, each once
    assert all(x is not None for x in report.initial_nll) and all(report.converged)
    move = z - h0
    torch.testing.assert_close(move[:, 0], move[:, 2])


def test_micro_batches_give_the_same_targets_as_one_batch():
    """``micro_batch``: the gradient accumulated over batches of 2 requests (prefixed variants, a
    shared δ split across batches, a scored continuation) gives the targets of one batch."""
    from unierase.edit.values import ValueConfig, compute_target_values
    from unierase.models.adapters import find_mlp_output

    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    adapter = find_mlp_output(model)
    questions = ["What is the capital of France?", "Who wrote Hamlet?", "Where is Rome?", "Who painted it?",
                 "What is two and two?"]
    prompts = [p for i, q in enumerate(questions) for p in build_edit_prompts(tok, q, i, len(q) - 1, 1)]
    refusal = [[11, 12, 13]] * len(questions)
    results = {}
    for size in (None, 2):
        config = ValueConfig(steps=4, lr=0.1, stop_loss=0.0, micro_batch=size)
        z, h0, report = compute_target_values(model, adapter, 1, prompts, len(questions), 7, tok.pad_token_id, config,
                                              progress=False, continuations=refusal, groups=[0, 1, 1, 2, 1])
        results[size] = (z, h0, report)
    (z, h0, report), (z_micro, _, report_micro) = results[None], results[2]
    assert report.steps == report_micro.steps == 4 and (z - h0).norm() > 1e-2  # δ moved
    torch.testing.assert_close(z_micro, z, atol=1e-5, rtol=1e-4)
    assert all(abs(a - b) < 1e-3 for a, b in zip(report_micro.final_nll, report.final_nll))


def test_steps_in_the_states_unit_move_delta_by_the_same_share_of_the_state_on_any_model():
    """lr_unit 'state': Adam's first step moves every coordinate of δ by lr × rms(h₀), so ‖δ‖/‖h₀‖ is
    lr on a model whose residual stream is larger or smaller alike; 'absolute' moves it by lr."""
    from unierase.edit.values import ValueConfig, compute_target_values
    from unierase.models.adapters import find_mlp_output

    tok = build_tokenizer()
    questions = ["What is the capital of France?", "Who wrote Hamlet?"]
    for scale in (1.0, 30.0):
        torch.manual_seed(0)
        model = build_model("llama", len(tok))
        with torch.no_grad():  # another scale of the residual stream
            model.get_input_embeddings().weight.mul_(scale)
        adapter = find_mlp_output(model)
        prompts = [build_edit_prompts(tok, q, i, len(q) - 1, 0)[0] for i, q in enumerate(questions)]
        for unit in ("state", "absolute"):
            config = ValueConfig(steps=1, lr=0.05, lr_unit=unit, stop_loss=0.0, continuation_weight=0.0,
                                 weight_decay=0.0, kl_weight=0.0, clamp_factor=10.0)
            _, h0, report = compute_target_values(model, adapter, 1, prompts, 2, 5, tok.pad_token_id, config,
                                                  progress=False)
            expected = [0.05] * 2 if unit == "state" else (0.05 * h0.shape[0] ** 0.5 / h0.norm(dim=0)).tolist()
            assert report.delta_norm_ratio == pytest.approx(expected, rel=0.02), (unit, scale)
