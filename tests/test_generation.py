import torch

from unierase.generation import generate_answer_ids, greedy_batch, stop_token_ids, teacher_forced_agreement
from unierase.prompts import encode_text, render_prompt


def test_greedy_batch_matches_step_by_step_argmax(tiny_llama):
    """Batched greedy decoding with a shrinking cache equals decoding each prompt alone without a cache."""
    model, tok = tiny_llama
    questions = ["What is the capital of France?", "Who wrote it?", "Name a colour."]
    prompts = [encode_text(tok, render_prompt(tok, q)) for q in questions]
    batched = greedy_batch(model, prompts, max_new_tokens=6, stops=set(), pad_id=tok.pad_token_id)
    for prompt, got in zip(prompts, batched):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(6):
                ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        assert got == ids[len(prompt):]


def test_stop_token_ends_a_row_and_is_kept_only_when_asked(tiny_llama):
    model, tok = tiny_llama
    prompt = encode_text(tok, render_prompt(tok, "What is the capital of France?"))
    free = greedy_batch(model, [prompt], max_new_tokens=4, stops=set(), pad_id=tok.pad_token_id)[0]
    stop = {free[1]}
    assert greedy_batch(model, [prompt], max_new_tokens=4, stops=stop, pad_id=tok.pad_token_id)[0] == free[:1]
    assert greedy_batch(model, [prompt], max_new_tokens=4, stops=stop, pad_id=tok.pad_token_id, keep_stop=True)[0] == free[:2]


def test_model_agrees_with_its_own_answers(tiny_llama):
    model, tok = tiny_llama
    questions = ["What is the capital of France?", "Who wrote it?"]
    answers = generate_answer_ids(model, tok, questions, max_new_tokens=5)
    assert tok.eos_token_id in stop_token_ids(model, tok)
    assert teacher_forced_agreement(model, tok, questions, answers) == [1.0, 1.0]


import pytest

from tiny_models import ARCHITECTURES, build_model, build_tokenizer
from unierase.generation import prefill, shared_prefix_length


def test_shared_prefix_leaves_every_row_a_token_and_respects_the_limit():
    assert shared_prefix_length([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 7]]) == 5
    assert shared_prefix_length([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6]]) == 4  # the shorter row keeps its last token
    assert shared_prefix_length([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 7]], limit=4) == 4
    assert shared_prefix_length([[1, 2, 3, 9], [1, 2, 3, 8]]) == 0  # too short to be worth a prefill
    assert shared_prefix_length([[1, 2, 3, 4, 5, 6]]) == 0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_prefill_with_a_shared_prefix_gives_each_row_its_own_states(arch):
    """[shared][padding][own tokens] with masked padding and skipped positions = each sequence alone."""
    tok = build_tokenizer()
    model = build_model(arch, len(tok))
    shared = [5, 6, 7, 8, 9, 10]
    sequences = [shared + [11, 12, 13], shared + [14], shared + [15, 16]]
    with torch.no_grad():
        out, mask, common = prefill(model, sequences, tok.pad_token_id, logits_to_keep=0)
        assert common == len(shared) and mask.shape[1] == len(shared) + 3
        for row, seq in enumerate(sequences):
            alone = model(input_ids=torch.tensor([seq])).logits[0, common:]
            got = out.logits[row, out.logits.shape[1] - len(alone):]
            torch.testing.assert_close(got, alone, atol=1e-4, rtol=1e-4)


def test_teacher_forced_agreement_counts_each_answer_position(tiny_llama):
    model, tok = tiny_llama
    questions = ["What is the capital of France?", "Who wrote it?", "Name a colour."]
    answers = generate_answer_ids(model, tok, questions, max_new_tokens=4)
    wrong_last = [a[:-1] + [(a[-1] + 1) % 50] for a in answers]
    scores = teacher_forced_agreement(model, tok, questions, wrong_last)
    assert scores == [1 - 1 / len(a) for a in answers]
    # answers of different lengths in one batch (only the answer end of each row is scored)
    answers = generate_answer_ids(model, tok, questions, max_new_tokens=8)
    assert min(map(len, answers)) >= 3
    mixed = [answers[0][:1], answers[1][:2] + [(answers[1][2] + 1) % 50], []]
    assert teacher_forced_agreement(model, tok, questions, mixed) == pytest.approx([1.0, 2 / 3, 1.0])


def test_own_answers_are_generated_once_and_cut_to_each_callers_length(monkeypatch):
    from unierase import generation
    from tiny_models import build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    questions = ["What is the capital of France?", "Who wrote Hamlet?", "Where was Elena Marsh born?"]
    shared = generation.OwnAnswers(model, tok, questions, max_new_tokens=6)
    calls = []
    real = generation.generate_answer_ids
    monkeypatch.setattr(generation, "generate_answer_ids", lambda *a, **k: calls.append(k) or real(*a, **k))
    short = shared.get(questions[:2], 3)
    full = shared.get(questions, 6)
    assert len(calls) == 1 and calls[0]["max_new_tokens"] == 6
    assert short == [a[:3] for a in full[:2]]
    assert full == real(model, tok, questions, max_new_tokens=6)
    # a question list that is not a prefix of the shared one is generated on its own
    assert shared.get(questions[1:], 3) == real(model, tok, questions[1:], max_new_tokens=3)
    assert len(calls) == 2


def test_greedy_start_from_a_draft_stops_at_the_first_disagreement():
    from unierase.generation import greedy_start_from_draft

    stops = {0}
    # predictions[j] = the model's argmax after draft[:j]; one more than the draft
    assert greedy_start_from_draft([5, 6, 0, 9], [5, 6, 0], stops, 8) == ([5, 6, 0], True)  # all agree, draft ended
    assert greedy_start_from_draft([5, 7, 1, 9], [5, 6, 0], stops, 8) == ([5, 7], False)  # changes at 1: generate on
    assert greedy_start_from_draft([5, 0, 1, 9], [5, 6, 0], stops, 8) == ([5, 0], True)  # changes to a stop
    assert greedy_start_from_draft([5, 6, 7, 8], [5, 6, 7], stops, 3) == ([5, 6, 7], True)  # draft at the length limit
    assert greedy_start_from_draft([5, 6, 7, 8], [5, 6, 7], stops, 8) == ([5, 6, 7, 8], False)  # draft cut short: one more
    assert greedy_start_from_draft([5, 6, 7, 8], [5, 9, 7], stops, 2) == ([5, 6], True)  # the change reaches the limit


def test_a_snapshot_with_drafts_gives_the_answers_of_one_without(tiny_llama):
    """Drafts only save generation: same answers, and the agreement equals teacher_forced_agreement."""
    from unierase.edit_checks import snapshot

    model, tok = tiny_llama
    questions = ["What is the capital of France?", "Who wrote it?", "Name a colour.", "Where is Rome?"]
    plain = snapshot(model, tok, questions, max_new_tokens=6)
    own = plain.answer_ids
    drafts = [own[0], own[1][:2] + [(own[1][2] + 1) % 50] + own[1][3:], own[2][:3], None]
    with_drafts = snapshot(model, tok, questions, max_new_tokens=6, drafts=drafts)
    assert with_drafts.answer_ids == own and with_drafts.texts == plain.texts
    expected = teacher_forced_agreement(model, tok, questions[:3], drafts[:3])
    assert with_drafts.draft_agreement[:3] == pytest.approx(expected) and with_drafts.draft_agreement[3] is None
    assert with_drafts.draft_agreement[1] < 1.0


def test_answer_starts_are_continued_to_the_same_greedy_answers(tiny_llama):
    model, tok = tiny_llama
    questions = ["What is the capital of France?", "Who wrote it?"]
    full = generate_answer_ids(model, tok, questions, max_new_tokens=6)
    assert generate_answer_ids(model, tok, questions, max_new_tokens=6, answer_starts=[full[0][:3], []]) == full


def test_own_answers_suppressing_the_token_are_the_same_before_and_after_it_is_attached():
    """The statistics' own answers must not depend on whether the unlearning token was attached
    first (a cached token) or not (trained in the same run): a suppressed token is never chosen."""
    from unierase import generation
    from unierase.token.training import add_unlearning_token
    from tiny_models import build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    questions = ["What is the capital of France?", "Who wrote Hamlet?"]
    before = generation.OwnAnswers(model, tok, questions, 6, suppress=("<|unl|>",)).get(questions, 6)
    token_id = add_unlearning_token(model, tok, "<|unl|>")
    with torch.no_grad():  # a token every step would choose
        model.get_output_embeddings().weight[token_id] = 50 * model.get_output_embeddings().weight[:token_id].mean(0) + 50
    assert any(token_id in a for a in generation.OwnAnswers(model, tok, questions, 6).get(questions, 6))
    assert generation.OwnAnswers(model, tok, questions, 6, suppress=("<|unl|>",)).get(questions, 6) == before


def test_end_of_turn_is_the_templates_not_always_the_eos():
    """A Llama-3-style template closes a turn with <|eot_id|> while EOS is <|end_of_text|>, a
    Qwen-style one with <|im_end|> while EOS is <|endoftext|>: answers are trained to end, and
    generation stops, at the template's token."""
    from unierase.generation import stop_token_ids
    from unierase.prompts import encode_qa, end_of_turn_id
    from tiny_models import build_model, build_tokenizer

    tok = build_tokenizer()
    assert end_of_turn_id(tok) == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id  # ChatML: the same
    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|start|>", "<|eot_id|>", "<|end_of_text|>"]})
    tok.eos_token = "<|end_of_text|>"
    tok.chat_template = ("{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|eot_id|>{% endfor %}"
                         "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}")
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert end_of_turn_id(tok) == eot != tok.eos_token_id
    assert encode_qa(tok, "Who wrote Hamlet?", "Shakespeare.").input_ids[-1] == eot
    assert eot in stop_token_ids(build_model("llama", len(tok)), tok)
    qwen = build_tokenizer()  # Qwen2.5: ChatML turns (<|im_end|>), EOS <|endoftext|>
    qwen.add_special_tokens({"additional_special_tokens": ["<|endoftext|>"]})
    qwen.eos_token = "<|endoftext|>"
    assert end_of_turn_id(qwen) == qwen.convert_tokens_to_ids("<|im_end|>") != qwen.eos_token_id
    assert encode_qa(qwen, "Who wrote Hamlet?", "Shakespeare.").input_ids[-1] == qwen.convert_tokens_to_ids("<|im_end|>")
    plain = build_tokenizer()
    plain.chat_template = None
    assert end_of_turn_id(plain) == plain.eos_token_id
