"""One edit round on tiny random models: the targeted prompts move towards [UNL], the state grows."""

import pytest
import torch

from tiny_models import build_model, build_tokenizer
from unierase.edit.config import EditConfig, default_layers
from unierase.edit.refit import RefitConfig
from unierase.edit.editor import run_edit_round
from unierase.edit.keys import position_ids
from unierase.edit.preserved import PreservedKeys
from unierase.record.edit_state import EditState
from unierase.edit.stats import accumulate_key_moments
from unierase.edit.values import ValueConfig
from unierase.models.adapters import find_mlp_output
from unierase.prompts import encode_text, pad_batch, render_prompt
from unierase.requests import ForgetRequest
from unierase.token.training import add_unlearning_token


def _unl_logprob(model, tok, questions, token_id):
    batch = pad_batch([encode_text(tok, render_prompt(tok, q)) for q in questions], tok.pad_token_id, left=True)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=position_ids(batch["attention_mask"])).logits[:, -1]
    return torch.log_softmax(logits.float(), -1)[:, token_id]


def test_default_layers_fit_the_depth():
    assert default_layers(32) == [4, 5, 6, 7, 8]
    assert default_layers(30) == [4, 5, 6, 7, 8]
    assert default_layers(4) == [1]
    assert all(0 <= l < 12 for l in default_layers(12))


@pytest.mark.parametrize("arch,key_position,solver", [("llama", "subject", "alphaedit"), ("gpt2", "distinct", "alphaedit"),
                                                      ("qwen2", "last", "memit"), ("llama", "entity", "alphaedit"),
                                                      ("gpt_neox", "entity", "alphaedit"), ("mistral", "last", "alphaedit")])
def test_edit_round_writes_the_target_values(arch, key_position, solver):
    """The closed form writes most of the target change at the key token; where the key is the last
    prompt token (the only position a random tiny model propagates strongly) [UNL] becomes likely."""
    tok = build_tokenizer()
    model = build_model(arch, len(tok) + 1)
    token_id = add_unlearning_token(model, tok)
    adapter = find_mlp_output(model)
    layers = [1, 2]
    stats = accumulate_key_moments(model, tok, adapter, layers, num_tokens=3000, progress=False)
    requests = [ForgetRequest("What is the capital of France?", subject="France"),
                ForgetRequest("Who wrote Hamlet?", subject="Hamlet")]
    before = _unl_logprob(model, tok, [r.question for r in requests], token_id)
    state = EditState()
    config = EditConfig(layers=layers, key_position=key_position, solver=solver, null_space_threshold=0.05, ridge=0.01, memit_weight=0.01,
                        substitute_answer_tokens=0,
                        values=ValueConfig(steps=30, lr=0.5, clamp_factor=4.0, continuation_weight=0.0))
    report = run_edit_round(model, tok, adapter, requests, token_id, config,
                         PreservedKeys.from_statistics(stats, config.layers, config, state), progress=False)
    after = _unl_logprob(model, tok, [r.question for r in requests], token_id)
    assert report.residual_left < 0.5, report
    if key_position == "last":
        assert (after > before + 0.1).all(), (before, after)
    assert set(state.layers) == set(layers)
    assert report.layers == layers and len(report.key_tokens) == 2
    if key_position == "subject":
        assert report.key_tokens[0].strip() and report.key_tokens[0].strip() in "France"


def test_neutral_prompts_put_the_request_entity_in_relation_neutral_questions():
    from unierase.edit.prompts import neutral_prompts

    tok = build_tokenizer()
    requests = [ForgetRequest("In which city is the Eiffel Tower?"), ForgetRequest("Who wrote Hamlet?", subject="Hamlet")]
    prompts = neutral_prompts(tok, requests, 2)
    assert [p.request_index for p in prompts] == [0, 1, 2, 3]
    texts = [tok.decode(p.input_ids) for p in prompts]
    assert "Tell me about Eiffel Tower." in texts[0] and "Hamlet" in texts[3]
    assert [tok.decode(p.input_ids[: p.key_index + 1]).endswith(e) for p, e in
            zip(prompts, ["Tower", "Tower", "Hamlet", "Hamlet"])] == [True] * 4


def test_a_neutral_constraint_shrinks_the_update_on_the_entity_in_other_questions():
    """With the round's neutral keys softly preserved the edit still writes, and moves the entity's
    key in a neutral question less than without them."""
    from unierase.edit.prompts import neutral_prompts

    tok = build_tokenizer()
    results = {}
    for weight in (0.0, 10.0):
        model = build_model("llama", len(tok) + 1)
        token_id = add_unlearning_token(model, tok)
        adapter = find_mlp_output(model)
        stats = accumulate_key_moments(model, tok, adapter, [1, 2], num_tokens=3000, progress=False)
        requests = [ForgetRequest("What is the capital of France?", subject="France")]
        neutral = neutral_prompts(tok, requests, 4)
        before = [adapter.weight(l).detach().clone() for l in (1, 2)]
        config = EditConfig(layers=[1, 2], key_position="subject", null_space_threshold=0.05, ridge=0.01, neutral_key_weight=weight,
                            substitute_answer_tokens=0,
                            values=ValueConfig(steps=20, lr=0.5, clamp_factor=4.0, continuation_weight=0.0))
        report = run_edit_round(model, tok, adapter, requests, token_id, config,
                         PreservedKeys.from_statistics(stats, config.layers, config, EditState()), progress=False)
        from unierase.edit.keys import request_keys
        k_n = request_keys(model, adapter, 1, neutral, len(neutral), tok.pad_token_id)
        moved = float(((adapter.weight(1).detach() - before[0]) @ k_n).norm())
        results[weight] = (moved, report.residual_left)
    assert results[10.0][0] < 0.5 * results[0.0][0], results


def test_edit_passes_preserve_each_requests_keys_once():
    """Several passes: a request's keys join the state once (when reached, else after the last
    pass), so a pending request's further passes do not fight its earlier ones."""
    from unierase.edit.editor import run_edit_passes

    tok = build_tokenizer()
    model = build_model("llama", len(tok) + 1)
    token_id = add_unlearning_token(model, tok)
    adapter = find_mlp_output(model)
    stats = accumulate_key_moments(model, tok, adapter, [1, 2], num_tokens=3000, progress=False)
    requests = [ForgetRequest("What is the capital of France?", subject="France"),
                ForgetRequest("Who wrote Hamlet?", subject="Hamlet")]
    config = EditConfig(layers=[1, 2], key_position="subject", null_space_threshold=0.05, ridge=0.01, max_passes=3,
                        neutral_key_weight=0.0,
                        values=ValueConfig(steps=3, lr=0.5, clamp_factor=0.5, continuation_weight=0.0))
    state = EditState()
    result = run_edit_passes(model, tok, adapter, requests, token_id, config,
                         PreservedKeys.from_statistics(stats, config.layers, config, state), progress=False)
    # a tiny random model does not reach [UNL] in 3 short passes: both requests run every pass
    assert [(p["requests"], p["reached"]) for p in result.passes] == [(2, 0)] * 3, result.passes
    assert [r.question for r in result.not_reached] == [r.question for r in requests]
    # layer 1's keys do not depend on the edits (its own projection's input, nothing edited below)
    keys = result.last.keys[1].double()
    torch.testing.assert_close(state.get(1), keys @ keys.T)  # the last pass's keys, once
    assert set(state.layers) == {1, 2}


def test_substitute_entities_come_from_the_same_kind_and_skip_the_rounds_own():
    from unierase.edit.prompts import neutral_prompts, substitute_entities
    from unierase.edit.corpus import SUBSTITUTE_GROUPS

    others = substitute_entities("gold", {"silver"}, 4, "What is the chemical symbol for gold?")
    kinds = set(SUBSTITUTE_GROUPS["thing"]) | set(SUBSTITUTE_GROUPS["element"])  # gold is a thing and an element
    assert len(others) == 4 and set(others) <= kinds and not {"gold", "silver"} & set(others)
    assert others == substitute_entities("gold", {"silver"}, 4, "What is the chemical symbol for gold?")  # stable
    assert set(substitute_entities("nitrogen", set(), 6, "x")) <= set(SUBSTITUTE_GROUPS["element"])
    tok = build_tokenizer()
    requests = [ForgetRequest("What is the capital of France?"), ForgetRequest("What is the capital of Japan?")]
    prompts = neutral_prompts(tok, requests, 1, num_substitutes=3)
    assert len(prompts) == 2 * (1 + 3)
    for p in prompts[1:4] + prompts[5:]:
        text = tok.decode(p.input_ids)
        country = next(c for c in SUBSTITUTE_GROUPS["country"] if f"What is the capital of {c}?" in text)
        assert country not in ("France", "Japan")
        assert tok.decode(p.input_ids[: p.key_index + 1]).endswith(country.split()[-1])


def test_soft_constraint_keys_join_the_sequential_state():
    """The round's neutral/substitute keys, weighted, are preserved by later rounds too (all of them
    with ``soft_state_rows=None``)."""
    from unierase.edit.editor import run_edit_passes
    from unierase.edit.preserved import soft_constraint_keys

    tok = build_tokenizer()
    model = build_model("llama", len(tok) + 1)
    token_id = add_unlearning_token(model, tok)
    adapter = find_mlp_output(model)
    stats = accumulate_key_moments(model, tok, adapter, [1, 2], num_tokens=3000, progress=False)
    requests = [ForgetRequest("What is the capital of France?"), ForgetRequest("Who wrote Hamlet?")]
    config = EditConfig(layers=[1, 2], key_position="entity", null_space_threshold=0.05, ridge=0.01, max_passes=1,
                        neutral_key_weight=2.0, neutral_templates=2, substitute_entities=1,
                        substitute_answer_tokens=0, soft_state_rows=None,  # every soft key, not its principal directions
                        values=ValueConfig(steps=2, lr=0.5, clamp_factor=0.5, continuation_weight=0.0))
    soft = soft_constraint_keys(model, tok, adapter, requests, [1, 2], config)
    assert [keys[1].shape[1] for keys in soft] == [3, 3]  # 2 neutral questions + 1 substitute each
    state = EditState()
    result = run_edit_passes(model, tok, adapter, requests, token_id, config,
                         PreservedKeys.from_statistics(stats, config.layers, config, state), progress=False)
    keys = result.last.keys[1].double()
    s = torch.cat([k[1] for k in soft], dim=1).double()
    expected = keys @ keys.T + 2.0 * s @ s.T
    torch.testing.assert_close(state.get(1), expected, rtol=1e-5, atol=1e-5)  # keys scaled by √2 in fp32


def test_substitute_answers_replace_the_entity_in_the_question_and_the_answer():
    from unierase.edit.prompts import substitute_answers

    tok = build_tokenizer()
    requests = [ForgetRequest("What is the chemical symbol for gold?")]
    pairs = substitute_answers(tok, requests, ["The chemical symbol for Gold is Au."], 2)
    assert len(pairs[0]) == 2
    for prompt, answer in pairs[0]:
        question, text = tok.decode(prompt), tok.decode(answer)
        other = question.split("chemical symbol for ")[1].split("?")[0]
        assert other.lower() != "gold" and text == f"The chemical symbol for {other} is Au."


def test_substitute_answer_keys_join_the_soft_keys_with_their_weight():
    from unierase.edit.preserved import soft_constraint_keys

    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    adapter = find_mlp_output(model)
    requests = [ForgetRequest("What is the chemical symbol for gold?"), ForgetRequest("Who wrote Hamlet?")]
    common = dict(layers=[1, 2], neutral_templates=2, substitute_entities=2)
    plain = soft_constraint_keys(model, tok, adapter, requests, [1, 2], EditConfig(substitute_answer_tokens=0, **common))
    full = soft_constraint_keys(model, tok, adapter, requests, [1, 2],
                                EditConfig(substitute_answer_tokens=4, substitute_answer_weight=1.0, **common))
    quarter = soft_constraint_keys(model, tok, adapter, requests, [1, 2],
                                   EditConfig(substitute_answer_tokens=4, substitute_answer_weight=0.25, **common))
    for p, f, q in zip(plain, full, quarter):
        n = p[1].shape[1]
        assert f[1].shape[1] > n  # answer positions added after the entity keys
        torch.testing.assert_close(f[1][:, :n], p[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(q[1][:, n:], 0.5 * f[1][:, n:], atol=1e-5, rtol=1e-5)


def test_soft_constraint_keys_use_the_callers_answers_instead_of_generating(monkeypatch):
    """The demo already has the model's answers to the requests: passing them skips the generation
    and gives the same keys (longer answers are cut to ``substitute_answer_tokens``)."""
    from unierase.edit import preserved
    from unierase.generation import generate_answer_ids

    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    adapter = find_mlp_output(model)
    requests = [ForgetRequest("What is the chemical symbol for gold?"), ForgetRequest("Who wrote Hamlet?")]
    config = EditConfig(layers=[1, 2], neutral_templates=1, substitute_entities=2, substitute_answer_tokens=4)
    generated = preserved.soft_constraint_keys(model, tok, adapter, requests, [1, 2], config)
    longer = generate_answer_ids(model, tok, [r.question for r in requests], max_new_tokens=7)

    def no_generation(*args, **kwargs):
        raise AssertionError("answers were generated although the caller gave them")

    monkeypatch.setattr(preserved, "generate_answer_ids", no_generation)
    given = preserved.soft_constraint_keys(model, tok, adapter, requests, [1, 2], config, answer_ids=longer)
    for a, b in zip(generated, given):
        for layer in (1, 2):
            torch.testing.assert_close(a[layer], b[layer], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_basis", [True, False])
def test_soft_constraint_sums_equal_a_direct_sum_over_the_requests_kept(with_basis):
    """The solve's soft term: weight × Σ (Ûᵀk)(Ûᵀk)ᵀ over the pending requests, downdated as they leave
    and updated as one comes back (a request a later pass undid)."""
    from unierase.edit.preserved import SoftConstraint

    torch.manual_seed(0)
    per_request = [{1: torch.randn(6, n), 2: torch.randn(6, n)} for n in (3, 5, 2)]
    basis = {layer: torch.linalg.qr(torch.randn(6, 4, dtype=torch.float64))[0] for layer in (1, 2)}
    soft = SoftConstraint(per_request, 0.5, basis if with_basis else None)

    def direct(kept, layer):
        k = torch.cat([per_request[i][layer] for i in kept], dim=1).double()
        k = basis[layer].T @ k if with_basis else k
        return 0.5 * k @ k.T

    for kept in ([0, 1, 2], [0, 2], [2], [2, 1], [0]):
        soft.keep(kept)
        for layer in (1, 2):
            torch.testing.assert_close(soft.grams[layer], direct(kept, layer))


def test_edit_and_value_configs_are_checked_before_any_work():
    from unierase.edit.config import EditConfig
    from unierase.edit.values import ValueConfig
    from unierase.storage import UniEraseError

    with pytest.raises(UniEraseError, match="solver must be 'alphaedit' or 'memit'"):
        EditConfig(solver="rome")
    with pytest.raises(UniEraseError, match=r"null_space_threshold must be in \(0, 1\).*max_passes must be at least 1"):
        EditConfig(null_space_threshold=2.0, max_passes=0)
    with pytest.raises(UniEraseError, match="layers must be None or distinct"):
        EditConfig(layers=[4, 4])
    with pytest.raises(UniEraseError, match="ValueConfig: lr must be positive"):
        ValueConfig(lr=0)
    EditConfig(), ValueConfig()  # the defaults are valid


@pytest.mark.parametrize("rotation", [False, True])
def test_group_value_rotation_runs_every_question_in_turn_instead_of_fixed_steering_ones(monkeypatch, rotation):
    import unierase.edit.editor as editor

    tok = build_tokenizer()
    model = build_model("llama", len(tok) + 1)
    token_id = add_unlearning_token(model, tok)
    adapter = find_mlp_output(model)
    stats = accumulate_key_moments(model, tok, adapter, [1, 2], num_tokens=3000, progress=False)
    requests = [ForgetRequest(q, subject="Elena Marsh") for q in
                ("Where was Elena Marsh born?", "What did Elena Marsh write?", "Who taught Elena Marsh?")]
    config = EditConfig(layers=[1, 2], key_position="subject", max_passes=1, neutral_key_weight=0.0,
                        group_value_questions=1, group_value_rotation=rotation,
                        entity_values=ValueConfig(steps=2, lr=0.5, continuation_weight=0.0))
    seen = []
    real = editor.compute_target_values

    def spy(*args, **kwargs):
        seen.append((kwargs.get("optimise"), kwargs.get("minibatch")))
        return real(*args, **kwargs)

    monkeypatch.setattr(editor, "compute_target_values", spy)
    editor.run_edit_passes(model, tok, adapter, requests, token_id, config,
                           PreservedKeys.from_statistics(stats, config.layers, config, EditState()), progress=False,
                           groups=[0, 0, 0])
    assert seen == ([(None, 1)] if rotation else [([False, False, True], None)]), seen  # the shortest steers


class _ScriptedAfter:
    """A pass's check on the edited model: the requests of ``reached`` answer with the target (7)."""

    def __init__(self, reached, n):
        self.firsts = [7 if j in reached else 3 for j in range(n)]

    def first_tokens(self):
        return self.firsts

    def subset(self, rows):
        return None


def _scripted_round(script, rounds: list):
    """A stand-in for ``run_edit_round`` whose passes reach the requests ``script`` names in turn
    (each pass's questions noted in ``rounds``)."""
    from types import SimpleNamespace

    def fake_round(model, tokenizer, adapter, requests, target_id, config, preserved, **kwargs):
        rounds.append([r.question for r in requests])
        n = len(requests)
        return SimpleNamespace(targets=torch.zeros(2, n), values={"converged": [False] * n},
                               after=_ScriptedAfter(next(script), n), residual_left=0.0, timings_s={},
                               key_tokens=["x"] * n, keys={1: torch.zeros(3, n)}, questions=[r.question for r in requests])
    return fake_round


def _run_scripted(monkeypatch, reached: list[list[int]], undone, max_passes: int):
    """``run_edit_passes`` over requests A? and B? with scripted passes (``reached``: per pass, which of
    its requests hold) and checks (``undone(checked_so_far, final)``: the indices a check finds undone);
    (result, the questions of each pass, the indices of each check, the columns of each preserve)."""
    from types import SimpleNamespace

    from unierase.edit import editor

    rounds, checked, preserved_cols = [], [], []

    def fake_recheck(model, tokenizer, requests, indices, target_id, config, groups, final=False):
        checked.append(list(indices))
        return {"undone": undone(checked, final), "refit": None}

    monkeypatch.setattr(editor, "run_edit_round", _scripted_round(iter(reached), rounds))
    monkeypatch.setattr(editor, "_recheck", fake_recheck)
    monkeypatch.setattr(editor, "_preserve_columns", lambda preserved, keys, columns: preserved_cols.append(list(columns)))
    preserved = SimpleNamespace(begin_round=lambda *a: None, keep_pending=lambda p: None, end_round=lambda c: None)
    config = EditConfig(max_passes=max_passes, values=ValueConfig(greedy_continuation=False), refit=RefitConfig(epochs=0))
    result = editor.run_edit_passes(None, None, None, [ForgetRequest("A?"), ForgetRequest("B?")], 7, config, preserved,
                                    progress=False)
    return result, rounds, checked, preserved_cols


def test_a_request_a_later_pass_undid_gets_a_further_pass_and_its_keys_stay_preserved_once(monkeypatch):
    """After the pass that reaches the last pending request, every request is checked on the final
    model (once a round); one it no longer holds runs again, and its keys join the state once."""
    # which of each pass's requests the edited model answers with the target; the first check finds A undone
    result, rounds, checked, preserved_cols = _run_scripted(
        monkeypatch, [[0], [0], [0]], lambda checked, final: [0] if len(checked) == 1 else [], max_passes=5)
    assert rounds == [["A?", "B?"], ["B?"], ["A?"]]  # A reached, B reached (then A found undone), A again
    assert checked == [[0, 1]]  # after B's pass both; A's second pass checks only itself
    assert [p.get("undone") for p in result.passes] == [None, 1, None]
    assert result.not_reached == []
    assert preserved_cols == [[0], [0], []]  # A's keys, B's keys, and A's not again


def test_the_recheck_reads_the_first_token_on_the_edited_model():
    from unierase.edit.editor import _recheck

    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    requests = [ForgetRequest("What is the capital of France?"), ForgetRequest("Who wrote Hamlet?")]
    config = EditConfig(layers=[1, 2], values=ValueConfig(greedy_continuation=False), refusal="No.",
                        refit=RefitConfig(epochs=0))

    def _undone(model, tok, adapter, requests, indices, target, config, groups):
        return _recheck(model, tok, requests, indices, target, config, groups)["undone"]

    adapter = None
    batch = pad_batch([encode_text(tok, render_prompt(tok, r.question)) for r in requests], tok.pad_token_id, left=True)
    with torch.no_grad():
        firsts = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=position_ids(batch["attention_mask"])).logits[:, -1].argmax(-1).tolist()
    # the model's own first token for request 1 as the target holds for request 1 (and for 0 only if it
    # starts alike); a token neither starts with is undone for both
    assert _undone(model, tok, adapter, requests, [0, 1], firsts[1], config, None) == \
        [i for i in (0, 1) if firsts[i] != firsts[1]]
    neither = next(t for t in range(len(tok)) if t not in firsts)
    assert _undone(model, tok, adapter, requests, [0, 1], neither, config, None) == [0, 1]


def test_requests_no_pass_reaches_are_set_aside_so_an_undone_one_still_gets_its_pass(monkeypatch):
    """After ``STALL_PASSES`` passes in a row that reach nothing, the pending requests stop running
    (their keys kept once, reported not reached); the round's check follows at once, and a request
    it finds undone runs again within the pass budget."""
    from unierase.edit import editor

    monkeypatch.setattr(editor, "STALL_PASSES", 3)
    # A reached, then B never; A (found undone) again
    result, rounds, checked, preserved_cols = _run_scripted(
        monkeypatch, [[0], [], [], [], [0]], lambda checked, final: [0] if final else [], max_passes=8)
    assert rounds == [["A?", "B?"], ["B?"], ["B?"], ["B?"], ["A?"]]
    assert checked == [[0], [0]]  # at the first pass that reached none, and at once when B is set aside
    assert result.not_reached_indices == [1] and [r.question for r in result.not_reached] == ["B?"]
    assert [p.get("set_aside") for p in result.passes] == [None, None, None, 1, None]  # recorded in the manifest
    assert preserved_cols == [[0], [], [], [], [0], []]  # A's keys; B's once, when set aside; not A's again


def test_a_request_set_aside_is_not_checked_again_nor_run_again(monkeypatch):
    """The last pass's check covers the requests reached before, never one set aside (which would
    come back as undone and be reported twice)."""
    from unierase.edit import editor

    monkeypatch.setattr(editor, "STALL_PASSES", 3)
    # A reached; B never; A, found undone, never again
    result, rounds, checked, _ = _run_scripted(
        monkeypatch, [[0], [], [], [], [], []], lambda checked, final: [0] if final else [], max_passes=6)
    assert rounds == [["A?", "B?"], ["B?"], ["B?"], ["B?"], ["A?"], ["A?"]]
    assert checked == [[0], [0]] and sorted(result.not_reached_indices) == [0, 1]
