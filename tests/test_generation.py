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
