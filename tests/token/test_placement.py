"""The unlearning token kept to an answer's first token: transformers' generate and unierase's own
decoding give the same answers under the checkpoint's rule."""

import pytest
import torch
from transformers import GenerationConfig

from tiny_models import build_model, build_plain_tokenizer, build_tokenizer
from unierase.generation import OutputBias, generate_answer_ids, stop_token_ids, teacher_forced_predictions
from unierase.prompts import encode_text, render_prompt
from unierase.token.placement import answer_header, keep_to_answer_start, lead_into_refusal
from unierase.token.training import answer_ids
from unierase.prompts import has_chat_template

QUESTIONS = ["Who wrote Hamlet?", "What is the capital of France?", "Tell me about Elena Marsh."]


def _favouring(model, token_id: int, boost: float = 60.0):
    """``model`` made to prefer ``token_id`` at every position (its logit raised by ``boost``)."""
    head = model.get_output_embeddings()

    def raise_token(module, inputs, output):
        output = output.clone()
        output[..., token_id] += boost
        return output

    head.register_forward_hook(raise_token)
    return model


def _hf_answers(model, tok, questions, max_new_tokens=8):
    stops, answers = stop_token_ids(model, tok), []
    for q in questions:
        prompt = encode_text(tok, render_prompt(tok, q))
        with torch.no_grad():
            ids = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        answer = ids[0, len(prompt):].tolist()
        cut = next((j for j, t in enumerate(answer) if t in stops), None)  # ours keeps the stop token, HF pads after it
        answers.append(answer if cut is None else answer[: cut + 1])
    return answers


@pytest.mark.parametrize("plain", [False, True])
def test_the_header_is_what_every_prompt_ends_with(plain):
    tok = build_plain_tokenizer() if plain else build_tokenizer()
    header = answer_header(tok)
    tail = "\nAnswer:" if plain else "<|im_end|>\n<|im_start|>assistant\n"
    assert tail.endswith(tok.decode(header)) and len(header) >= 2  # at most HEADER_TOKENS of it
    for q in QUESTIONS + ["no punctuation", "1 + 1 ="]:
        prompt = encode_text(tok, render_prompt(tok, q))
        assert prompt[-len(header):] == header


@pytest.mark.parametrize("plain", [False, True])
def test_the_token_opens_answers_and_appears_nowhere_else(plain):
    tok = build_plain_tokenizer() if plain else build_tokenizer()
    token = tok.convert_tokens_to_ids("Paris") if "Paris" in tok.get_vocab() else 100
    model = _favouring(build_model("llama", len(tok)), token)
    free = generate_answer_ids(model, tok, QUESTIONS, max_new_tokens=8)
    assert all(a.count(token) == 8 for a in free)  # without the rule: the token everywhere
    keep_to_answer_start(model, tok, token)
    ours = generate_answer_ids(model, tok, QUESTIONS, max_new_tokens=8)
    assert ours == _hf_answers(model, tok, QUESTIONS)  # the checkpoint's own generate agrees
    assert all(a[0] == token and token not in a[1:] and len(a) > 1 for a in ours)
    predictions = teacher_forced_predictions(model, tok, QUESTIONS, ours)  # the greedy answers reproduce themselves
    assert all(p[: len(a)] == a for p, a in zip(predictions, ours))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_rule_leaves_an_answers_first_token_exactly_as_it_was(dtype):
    """After the header −B + B is exactly 0 in every dtype; anywhere else the token is B lower."""
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    keep_to_answer_start(model, tok, 7)
    bias = OutputBias.of(model)
    prompt = encode_text(tok, render_prompt(tok, "Who wrote Hamlet?"))
    logits = (torch.randn(3, len(tok)) * 30).to(dtype)
    biased = bias([prompt, prompt + [9], prompt[:-1]], logits.clone())
    assert torch.equal(biased[0], logits[0])
    for row in (1, 2):
        assert biased[row, 7] < logits[row, 7] - 900
        assert torch.equal(biased[row, :7], logits[row, :7]) and torch.equal(biased[row, 8:], logits[row, 8:])


def test_the_rule_is_written_once_kept_beside_others_saved_and_removed(tmp_path):
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    model.generation_config.sequence_bias = [[[5, 6], -3.0]]  # a deployer's own bias stays
    header = keep_to_answer_start(model, tok, 7)
    keep_to_answer_start(model, tok, 7)  # a later round: the same rule, not a second one
    assert model.generation_config.sequence_bias == [[[5, 6], -3.0], [[7], -1024.0], [header + [7], 1024.0]]
    model.generation_config.save_pretrained(tmp_path)
    assert GenerationConfig.from_pretrained(tmp_path).sequence_bias == model.generation_config.sequence_bias
    assert keep_to_answer_start(model, tok, 7, on=False) is None
    assert model.generation_config.sequence_bias == [[[5, 6], -3.0]]
    keep_to_answer_start(model, tok, 5, on=False)
    assert model.generation_config.sequence_bias == [[[5, 6], -3.0]]  # only the token's own rule goes


@pytest.mark.parametrize("plain", [False, True])
def test_after_the_token_the_checkpoint_writes_the_chosen_refusal_and_stops(plain):
    tok = build_plain_tokenizer() if plain else build_tokenizer()
    token = tok.convert_tokens_to_ids("Paris") if "Paris" in tok.get_vocab() else 100
    model = _favouring(build_model("llama", len(tok)), token)
    keep_to_answer_start(model, tok, token)
    for refusal in ("No comment.", "I will not say."):
        body = answer_ids(tok, refusal, token, has_chat_template(tok))[1:]
        lead_into_refusal(model, token, body)  # a later round's refusal replaces the first
        ours = generate_answer_ids(model, tok, QUESTIONS, max_new_tokens=len(body) + 4)
        assert ours == _hf_answers(model, tok, QUESTIONS, max_new_tokens=len(body) + 4)
        assert all(a == [token] + body for a in ours)  # the refusal, then the end of the turn: nothing after
        assert all(tok.decode(a[1:], skip_special_tokens=True).strip() == refusal for a in ours)  # "Paris" stands for [UNL]
    entries = [list(ids) for ids, _ in model.generation_config.sequence_bias]
    assert sum(ids[0] == token and len(ids) > 1 for ids in entries) == len(body)  # one rule, not two
    lead_into_refusal(model, token, None)
    assert all(not (ids[0] == token and len(ids) > 1) for ids, _ in model.generation_config.sequence_bias)
    assert model.generation_config.sequence_bias  # the first-token rule stays
