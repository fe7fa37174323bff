import pytest
import torch

from tiny_models import ARCHITECTURES, build_model, build_tokenizer
from unierase.edit.keys import at_key, capture_prompts
from unierase.edit.prompts import EditPrompt
from unierase.models.adapters import find_mlp_output


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_keys_with_a_shared_prefix_equal_keys_of_whole_prompts(arch):
    """Running the prompts' common prefix once as a cache leaves every captured key unchanged."""
    tok = build_tokenizer()
    model = build_model(arch, len(tok))
    adapter = find_mlp_output(model)
    shared = [5, 6, 7, 8, 9, 10]
    prompts = [EditPrompt(0, 0, shared + [11, 12, 13, 14], 8, (6, 10)),
               EditPrompt(1, 0, shared + [15, 16], 7, (6, 8)),
               EditPrompt(2, 0, shared + [17, 18, 19], 6, (6, 9))]
    modules = {"k": adapter.mlp_output(1)}
    got = {flag: [(at_key(c["k"], k), c, s) for _, c, s, k in capture_prompts(model, modules, prompts, tok.pad_token_id,
                                                                                shared_prefix=flag)]
           for flag in (True, False)}
    (keys_shared, captured, starts), (keys_whole, whole, whole_starts) = got[True][0], got[False][0]
    assert captured["k"].shape[1] < whole["k"].shape[1]  # the shared part was not captured
    torch.testing.assert_close(keys_shared, keys_whole, atol=1e-5, rtol=1e-5)
    for row, p in enumerate(prompts):  # every token from the key onwards is at starts + t
        for t in range(p.key_index, len(p.input_ids)):
            torch.testing.assert_close(captured["k"][row, starts[row] + t], whole["k"][row, whole_starts[row] + t],
                                       atol=1e-5, rtol=1e-5)


def test_keys_and_values_in_one_pass_match_separate_passes():
    """Also when the key layer is the value layer: the block must finish before the pass stops."""
    from tiny_models import tiny_edit_setup
    from unierase.edit.keys import request_keys_and_values
    from unierase.models.tracing import trace

    tok, model, adapter, prompts = tiny_edit_setup(num_prefixes=1)
    expected = []
    for p in (p for p in prompts if p.variant == 0):  # block 2's output at the key, one plain prompt at a time
        with torch.no_grad(), trace(adapter.block(2), keep_output=True) as rec:
            model(input_ids=torch.tensor([p.input_ids]))
        expected.append(rec.output[0, p.key_index])
    for layer in (1, 2):
        keys, values = request_keys_and_values(model, adapter, layer, 2, prompts, 2, tok.pad_token_id)
        alone, _ = request_keys_and_values(model, adapter, layer, None, prompts, 2, tok.pad_token_id)
        torch.testing.assert_close(keys, alone)
        torch.testing.assert_close(values, torch.stack(expected, dim=1), atol=1e-5, rtol=1e-5)


def test_keys_of_several_layers_in_one_pass_match_one_layer_at_a_time():
    from tiny_models import tiny_edit_setup
    from unierase.edit.keys import request_keys_and_values, request_keys_at

    tok, model, adapter, prompts = tiny_edit_setup(num_prefixes=1)
    together = request_keys_at(model, adapter, [0, 1, 2], prompts, 2, tok.pad_token_id)
    assert sorted(together) == [0, 1, 2]
    for layer, keys in together.items():
        torch.testing.assert_close(keys, request_keys_and_values(model, adapter, layer, None, prompts, 2, tok.pad_token_id)[0])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_replayed_lower_blocks_give_the_keys_of_full_passes(arch):
    """Key passes as in an edit round (layers 1, 2, 3; values at block 3): each pass replays the
    block output recorded below the previous pass's layer and records the one below its own; keys
    and values equal full passes after every update."""
    from unierase.edit.keys import LowerBlocks, request_keys_and_values
    from unierase.edit.prompts import build_edit_prompts

    tok = build_tokenizer()
    model = build_model(arch, len(tok))  # 4 layers
    adapter = find_mlp_output(model)
    questions = ["What is the capital of France?", "Who wrote Hamlet?", "Where is the Eiffel Tower?"]
    prompts = [p for i, q in enumerate(questions) for p in build_edit_prompts(tok, q, i, len(q) - 1, 2)]
    lower = LowerBlocks(adapter.blocks, keep=0)
    for layer in (1, 2, 3):
        lower.keep = layer - 1
        got = request_keys_and_values(model, adapter, layer, 3, prompts, 3, tok.pad_token_id, batch_size=4, lower=lower)
        full = request_keys_and_values(model, adapter, layer, 3, prompts, 3, tok.pad_token_id, batch_size=4)
        for a, b in zip(got, full):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        with torch.no_grad():  # the round's update at this layer
            adapter.add_to_weight(layer, 0.05 * torch.randn_like(adapter.weight(layer)))
        assert {block for block, _ in lower.outputs.values()} == {layer - 1}
    assert len(lower.outputs) == 3  # batches: the 3 plain prompts, 4 + 2 prefixed ones


def test_answer_position_keys_are_the_keys_of_the_positions_that_predict_the_answer():
    from unierase.edit.keys import answer_position_keys, token_keys

    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    adapter = find_mlp_output(model)
    shared = [5, 6, 7, 8, 9, 10]
    pairs = [(shared + [11, 12], [13, 14, 15]), (shared + [16], [17, 18]), (shared + [19, 20, 21], [])]
    got = answer_position_keys(model, adapter, [1, 2], pairs, tok.pad_token_id)
    for layer in (1, 2):
        whole = token_keys(model, adapter, layer, [EditPrompt(i, 0, p + a, len(p) - 1, (0, len(p)))
                                                   for i, (p, a) in enumerate(pairs)], tok.pad_token_id)
        for (p, a), keys, full in zip(pairs, got, whole):
            expected = full[len(p) - 1: len(p) + len(a) - 1] if a else full[len(p) - 1: len(p)]
            torch.testing.assert_close(keys[layer], expected, atol=1e-5, rtol=1e-5)


def test_a_request_describing_its_entity_is_keyed_at_its_question_end():
    from unierase.edit.keys import choose_key_chars
    from unierase.requests import ForgetRequest

    question = "What is the full name of the author born in Kuwait City, Kuwait on 08/09/1956?"
    requests = [ForgetRequest(question), ForgetRequest(question)]
    ends = choose_key_chars(None, None, None, requests, "auto", 0, None, described=[False, True])
    assert question[:ends[0]].endswith("Kuwait") and ends[1] == len(question)
