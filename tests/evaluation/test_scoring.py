"""Batched scoring and generation on a tiny random model: equal to the one-at-a-time / reference computations."""

import torch
import torch.nn.functional as F

from unierase.evaluation.scoring import generate_greedy, prompt_ids, score_answer_groups
from unierase.prompts import encode_qa

QUESTIONS = ["Who wrote Hamlet?", "What is the capital of France, the large country in western Europe?", "Name a colour."]
ANSWERS = [["Shakespeare wrote it.", "Marlowe.", "Bacon did."],
           ["Paris.", "Lyon is the capital of the country.", "Nice."],
           ["Red", "Blue is a colour that many people like", "Green"]]


def _collect(gen):
    out = {}
    for indices, values in gen:
        out.update(zip(indices, values))
    return out


def _manual_nll(model, tokenizer, question, answer):
    enc = encode_qa(tokenizer, question, answer, chat=True)
    with torch.no_grad():
        logits = model(torch.tensor([enc.input_ids])).logits[0]
    labels = torch.tensor(enc.labels)
    return F.cross_entropy(logits[:-1], labels[1:], ignore_index=-100).item(), int((labels != -100).sum())


def test_scores_match_manual_answer_only_nll(tiny_model, tokenizer):
    shared = _collect(score_answer_groups(tiny_model, tokenizer, QUESTIONS, ANSWERS, chat=True, batch_size=3))
    full = _collect(score_answer_groups(tiny_model, tokenizer, QUESTIONS, ANSWERS, chat=True, batch_size=2, mode="full"))
    single = _collect(score_answer_groups(tiny_model, tokenizer, QUESTIONS, ANSWERS, chat=True, batch_size=1))
    for i, q in enumerate(QUESTIONS):
        for j, a in enumerate(ANSWERS[i]):
            nll, n = _manual_nll(tiny_model, tokenizer, q, a)
            for res in (shared, full, single):
                assert abs(res[i][j].nll - nll) < 1e-5
                assert res[i][j].n_tokens == n  # answer tokens + end-of-turn
        assert shared[i][0].predicted == full[i][0].predicted
        assert len(shared[i][0].labels) == shared[i][0].n_tokens
        assert shared[i][1].predicted is None  # only slot 0 keeps tokens by default


def test_scoring_todo_subset(tiny_model, tokenizer):
    res = _collect(score_answer_groups(tiny_model, tokenizer, QUESTIONS, ANSWERS, chat=True, batch_size=2, todo=[2]))
    assert set(res) == {2}


def test_batched_greedy_equals_hf_generate(tiny_model, tokenizer):
    batched = _collect(generate_greedy(tiny_model, tokenizer, QUESTIONS, chat=True, max_new_tokens=10, batch_size=3))
    single = _collect(generate_greedy(tiny_model, tokenizer, QUESTIONS, chat=True, max_new_tokens=10, batch_size=1))
    for i, q in enumerate(QUESTIONS):
        p = prompt_ids(tokenizer, q, True)
        with torch.no_grad():
            ref = tiny_model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                      max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)[0][len(p):].tolist()
        if tokenizer.eos_token_id in ref:
            ref = ref[: ref.index(tokenizer.eos_token_id)]
        assert batched[i] == ref
        assert single[i] == ref
        assert len(batched[i]) <= 10


class _StopFirstRow(torch.nn.Module):
    """Makes the first row of the prompt pass emit the end-of-turn token, so it leaves the batch.

    The prompt pass is the first call with an attention mask (a shared-prefix prefill runs before
    it without one)."""

    def __init__(self, inner, eos):
        super().__init__()
        self.inner, self.eos, self.calls = inner, eos, 0

    @property
    def device(self):
        return self.inner.device

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        if self.calls == 0 and kwargs.get("attention_mask") is not None:
            out.logits[0, -1, self.eos] = 1e9
            self.calls += 1
        return out


def test_finished_rows_leave_the_batch(tiny_model, tokenizer):
    wrapped = _StopFirstRow(tiny_model, tokenizer.eos_token_id)
    gens = _collect(generate_greedy(wrapped, tokenizer, QUESTIONS, chat=True, max_new_tokens=8, batch_size=3))
    reference = _collect(generate_greedy(tiny_model, tokenizer, QUESTIONS, chat=True, max_new_tokens=8, batch_size=1))
    longest = max(range(3), key=lambda i: len(prompt_ids(tokenizer, QUESTIONS[i], True)))
    assert gens[longest] == []
    for i in range(3):
        if i != longest:
            assert gens[i] == reference[i]
