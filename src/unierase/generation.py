"""Batched greedy answers to questions, rendered exactly as the edit renders them."""

from __future__ import annotations

import torch

from .prompts import encode_text, pad_batch, render_prompt


@torch.no_grad()
def generate_answers(model, tokenizer, questions: list[str], *, max_new_tokens: int = 32, batch_size: int = 32,
                     forced_prefix: list[int] | None = None, raw: bool = False) -> list[str]:
    """Greedy answers; ``forced_prefix`` token ids are appended to every prompt first (e.g. ``[UNL]``).

    ``raw`` keeps special tokens (the unlearning token, end of turn) in the decoded text.
    """
    return [tokenizer.decode(ids, skip_special_tokens=not raw) for ids in
            generate_answer_ids(model, tokenizer, questions, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                forced_prefix=forced_prefix)]


@torch.no_grad()
def generate_answer_ids(model, tokenizer, questions: list[str], *, max_new_tokens: int = 32, batch_size: int = 32,
                        forced_prefix: list[int] | None = None) -> list[list[int]]:
    """Greedy answer token ids (including the end-of-turn token when it is produced)."""
    device = model.get_input_embeddings().weight.device
    prompts = [encode_text(tokenizer, render_prompt(tokenizer, q)) + list(forced_prefix or []) for q in questions]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    eos = tokenizer.eos_token_id
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        batch = pad_batch([prompts[i] for i in chunk], tokenizer.pad_token_id, left=True)
        out = model.generate(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=eos)
        for row, i in enumerate(chunk):
            ids = out[row, batch["input_ids"].shape[1]:].tolist()
            if eos in ids:
                ids = ids[: ids.index(eos) + 1]
            results[i] = ids
    return results


@torch.no_grad()
def first_token_ids(model, tokenizer, questions: list[str], batch_size: int = 32) -> list[int]:
    """The greedy first answer token of each question (one forward pass, no generation)."""
    device = model.get_input_embeddings().weight.device
    prompts = [encode_text(tokenizer, render_prompt(tokenizer, q)) for q in questions]
    out: list[int] = []
    for start in range(0, len(prompts), batch_size):
        batch = pad_batch(prompts[start: start + batch_size], tokenizer.pad_token_id, left=True)
        mask = batch["attention_mask"].to(device)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=mask,
                       position_ids=(mask.cumsum(-1) - 1).clamp(min=0), logits_to_keep=1, use_cache=False).logits
        out += logits[:, -1].argmax(-1).tolist()
    return out


@torch.no_grad()
def teacher_forced_agreement(model, tokenizer, questions: list[str], answers: list[list[int]], batch_size: int = 16) -> list[float]:
    """Share of answer positions where ``model``'s argmax equals the given (reference) answer token.

    Feed the unedited model's own greedy answer ids as ``answers`` to measure an edit's locality.
    """
    device = model.get_input_embeddings().weight.device
    scores: list[float] = []
    for start in range(0, len(questions), batch_size):
        qs, ans = questions[start: start + batch_size], answers[start: start + batch_size]
        prompts = [encode_text(tokenizer, render_prompt(tokenizer, q)) for q in qs]
        batch = pad_batch([p + a for p, a in zip(prompts, ans)], tokenizer.pad_token_id)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        pred = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.argmax(-1)
        for row, (p, a) in enumerate(zip(prompts, ans)):
            if not a:
                scores.append(1.0)
                continue
            guess = pred[row, len(p) - 1: len(p) - 1 + len(a)]
            scores.append(float((guess == torch.tensor(a, device=guess.device)).float().mean()))
    return scores
