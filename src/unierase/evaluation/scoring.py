"""Model computations for the evaluation: teacher-forced answer NLLs and greedy generation.

Both run in batches of similar-length items (scoring: by total answer length; generation: by
prompt length); prompts are left-padded (explicit position ids), so every prompt ends in the last
column. Scoring reuses the prompt's key/value cache for all answers of a question (the answer,
the paraphrased answer and the perturbed answers share one prompt): the prompt is run once, each
answer group is run on top of the cache, and the cache is cropped back. ``mode="full"`` scores
each prompt+answer sequence from scratch instead (same numbers up to float rounding; used for
models whose cache cannot be cropped). Generation is greedy with a KV cache; finished rows leave
the batch so that the rest is not slowed down by them.

Each function is a generator that yields ``(item_indices, results)`` after every batch, so that
the caller can save progress as it goes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..generation import greedy_batch, stop_token_ids
from ..prompts import encode_qa, encode_text, pad_batch, render_prompt

log = logging.getLogger(__name__)


@dataclass
class AnswerScore:
    """Teacher-forced score of one answer: mean token NLL over the answer and end-of-turn token."""

    nll: float
    n_tokens: int
    predicted: list[int] | None = None  # argmax token at each answer position
    labels: list[int] | None = None  # the answer's token ids


def split_prompt_answer(tokenizer, question: str, answer: str, chat: bool) -> tuple[list[int], list[int]]:
    """Prompt ids and answer ids (answer + end-of-turn), exactly as :func:`encode_qa` builds them."""
    enc = encode_qa(tokenizer, question, answer, chat=chat)
    return enc.input_ids[: enc.prompt_len], enc.input_ids[enc.prompt_len:]


def prompt_ids(tokenizer, question: str, chat: bool) -> list[int]:
    return encode_text(tokenizer, render_prompt(tokenizer, question, chat=chat))


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _batches(order: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), batch_size):
        yield list(order[start:start + batch_size])


def _token_scores(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, keep: bool) -> list[AnswerScore]:
    """logits (B, T, V) predicting targets (B, T); mask (B, T) marks real answer positions."""
    nll_tok = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    nll_tok = nll_tok * mask
    counts = mask.sum(-1)
    means = nll_tok.sum(-1) / counts.clamp(min=1)
    preds = logits.argmax(-1) if keep else None
    out = []
    for row in range(targets.shape[0]):
        n = int(counts[row])
        score = AnswerScore(float(means[row]), n)
        if keep:
            sel = mask[row].bool()
            score.predicted = preds[row][sel].tolist()
            score.labels = targets[row][sel].tolist()
        out.append(score)
    return out


@torch.no_grad()
def score_answer_groups(
    model,
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[Sequence[str]],
    *,
    chat: bool,
    batch_size: int = 16,
    keep_tokens: Sequence[int] = (0,),
    todo: Sequence[int] | None = None,
    mode: str = "shared",
) -> Iterator[tuple[list[int], list[list[AnswerScore]]]]:
    """Score ``answers[i][j]`` given ``questions[i]`` for every item i in ``todo`` (default: all).

    Every item must have the same number of answers. ``keep_tokens`` lists the answer slots whose
    argmax predictions and labels are kept (for exact memorisation / extraction strength).
    Yields ``(indices, scores)`` per batch with ``scores[b][j]`` for item ``indices[b]``.
    """
    if mode not in ("shared", "full"):
        raise ValueError(f"unknown scoring mode {mode!r}")
    device = model.get_input_embeddings().weight.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    todo = list(range(len(questions))) if todo is None else list(todo)
    encoded: dict[int, tuple[list[int], list[list[int]]]] = {}
    for i in todo:
        groups = [split_prompt_answer(tokenizer, questions[i], a, chat) for a in answers[i]]
        encoded[i] = (groups[0][0], [g[1] for g in groups])
    n_slots = {len(encoded[i][1]) for i in todo}
    if len(n_slots) > 1:
        raise ValueError("every item must have the same number of answers")
    n_slots = n_slots.pop() if n_slots else 0
    # Sort by the total answer length: the answers are run once per slot, the prompt once, so this
    # keeps the padding small where most of the work is.
    order = sorted(todo, key=lambda i: (-sum(len(a) for a in encoded[i][1]), -len(encoded[i][0])))
    keep = set(keep_tokens)
    t0, done = time.time(), 0
    for batch in _batches(order, batch_size):
        if mode == "shared":
            scores = _score_shared(model, [encoded[i] for i in batch], n_slots, keep, pad_id, device)
        else:
            scores = _score_full(model, [encoded[i] for i in batch], n_slots, keep, pad_id, device)
        done += len(batch)
        log.debug("scored %d/%d items (%.1f s)", done, len(order), time.time() - t0)
        yield batch, scores


def _score_shared(model, items, n_slots, keep, pad_id, device) -> list[list[AnswerScore]]:
    prompts = pad_batch([p for p, _ in items], pad_id, left=True)
    ids, mask = prompts["input_ids"].to(device), prompts["attention_mask"].to(device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True, logits_to_keep=1)
    cache = out.cache
    last_logits = out.logits[:, -1:, :]
    prompt_len = mask.sum(-1, keepdim=True)
    width = ids.shape[1]
    result: list[list[AnswerScore]] = [[None] * n_slots for _ in items]  # type: ignore[list-item]
    for slot in range(n_slots):
        ans = pad_batch([a[slot] for _, a in items], pad_id)
        aids, amask = ans["input_ids"].to(device), ans["attention_mask"].to(device)
        full_mask = torch.cat([mask, amask], dim=1)
        pos = prompt_len + torch.arange(aids.shape[1], device=device)[None, :]
        out = model(input_ids=aids, attention_mask=full_mask, position_ids=pos, cache=cache, use_cache=True)
        logits = torch.cat([last_logits, out.logits[:, :-1, :]], dim=1)
        for row, score in enumerate(_token_scores(logits, aids, amask, slot in keep)):
            result[row][slot] = score
        cache = out.cache
        cache.crop(-aids.shape[1])
        if cache.get_seq_length() != width:
            raise RuntimeError("the model's cache could not be cropped back to the prompt; use scoring mode 'full'")
        del out, logits
    return result


def _score_full(model, items, n_slots, keep, pad_id, device) -> list[list[AnswerScore]]:
    result: list[list[AnswerScore]] = [[None] * n_slots for _ in items]  # type: ignore[list-item]
    for slot in range(n_slots):
        seqs = [p + a[slot] for p, a in items]
        batch = pad_batch(seqs, pad_id, left=True)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        ans_len = [len(a[slot]) for _, a in items]
        k = max(ans_len)
        out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), logits_to_keep=k + 1)
        logits = out.logits[:, :-1, :]  # positions W-k-1 .. W-2 predict tokens W-k .. W-1
        targets = ids[:, -k:]
        amask = torch.zeros_like(targets)
        for row, n in enumerate(ans_len):
            amask[row, k - n:] = 1
        for row, score in enumerate(_token_scores(logits, targets, amask, slot in keep)):
            result[row][slot] = score
    return result


@torch.no_grad()
def answer_token_statistics(model, tokenizer, questions: Sequence[str], answers: Sequence[str], *, chat: bool,
                            batch_size: int = 16, todo: Sequence[int] | None = None) -> Iterator[tuple[list[int], list[dict]]]:
    """What the membership scores need (``mia.token_statistics``) for ``answers[i]`` after ``questions[i]``,
    teacher forced over the answer and end-of-turn tokens as the TOFU NLL: each token's log p, and
    the mean and standard deviation of log p under the model's next-token distribution there."""
    from .mia import token_statistics

    device = model.get_input_embeddings().weight.device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    todo = list(range(len(questions))) if todo is None else list(todo)
    encoded = {i: split_prompt_answer(tokenizer, questions[i], answers[i], chat) for i in todo}
    order = sorted(todo, key=lambda i: -sum(map(len, encoded[i])))
    for batch in _batches(order, batch_size):
        padded = pad_batch([encoded[i][0] + encoded[i][1] for i in batch], pad_id, left=True)
        ids, mask = padded["input_ids"].to(device), padded["attention_mask"].to(device)
        k = max(len(encoded[i][1]) for i in batch)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), logits_to_keep=k + 1).logits
        labels = ids[:, -(k + 1):].clone()
        for row, i in enumerate(batch):  # score only the answer's tokens
            labels[row, : k + 1 - len(encoded[i][1])] = -100
        stats = token_statistics(logits, labels)
        yield batch, [{"logprobs": lp, "means": m, "stds": s} for lp, m, s in stats]


@torch.no_grad()
def generate_greedy(
    model,
    tokenizer,
    questions: Sequence[str],
    *,
    chat: bool,
    max_new_tokens: int = 200,
    batch_size: int = 16,
    todo: Sequence[int] | None = None,
) -> Iterator[tuple[list[int], list[list[int]]]]:
    """Greedy continuation of each question's prompt; yields ``(indices, generated ids)`` per batch.

    The generated ids stop before the first stop token (end of turn / EOS) and hold at most
    ``max_new_tokens`` tokens.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(model, tokenizer)
    todo = list(range(len(questions))) if todo is None else list(todo)
    prompts = {i: prompt_ids(tokenizer, questions[i], chat) for i in todo}
    order = sorted(todo, key=lambda i: -len(prompts[i]))
    t0, done = time.time(), 0
    for batch in _batches(order, batch_size):
        generated = greedy_batch(model, [prompts[i] for i in batch], max_new_tokens=max_new_tokens, stops=stops, pad_id=pad_id)
        done += len(batch)
        log.debug("generated %d/%d items (%.1f s)", done, len(order), time.time() - t0)
        yield batch, generated
