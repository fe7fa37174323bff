"""Batched greedy answers to questions, rendered exactly as the edit renders them."""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import SequenceBiasLogitsProcessor

from .models.tracing import stop_after
from .prompts import encode_text, pad_batch, render_prompt
from .storage import UniEraseError


@torch.no_grad()
def generate_answers(model, tokenizer, questions: list[str], *, max_new_tokens: int = 32, batch_size: int = 128,
                     forced_prefix: list[int] | None = None, raw: bool = False) -> list[str]:
    """Greedy answers; ``forced_prefix`` token ids are appended to every prompt first (e.g. ``[UNL]``).

    ``raw`` keeps special tokens (the unlearning token, end of turn) in the decoded text.
    """
    return [tokenizer.decode(ids, skip_special_tokens=not raw) for ids in
            generate_answer_ids(model, tokenizer, questions, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                forced_prefix=forced_prefix)]


def check_lengths(model, tokenizer, questions: list[str], max_new_tokens: int, *, what: str = "question") -> None:
    """Fail before any work when a prompt plus ``max_new_tokens`` cannot fit the model's context."""
    if max_new_tokens < 1:
        raise UniEraseError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if not context:
        return
    if max_new_tokens >= context:
        raise UniEraseError(f"max_new_tokens {max_new_tokens} does not fit the model's context of {context} tokens")
    for i, question in enumerate(questions):
        if len(question) > 4 * context:  # far too long whatever the tokenizer: do not tokenize megabytes
            raise UniEraseError(f"{what} {i + 1} ({len(question):,} characters) cannot fit the model's context of {context} tokens")
        length = len(encode_text(tokenizer, render_prompt(tokenizer, question)))
        if length + max_new_tokens > context:
            raise UniEraseError(f"{what} {i + 1} takes {length} tokens; with {max_new_tokens} new tokens it exceeds the "
                                f"model's context of {context}")


def stop_token_ids(model, tokenizer) -> set[int]:
    """End-of-turn / EOS ids of the tokenizer (its chat template's end of turn too) and the model's
    generation config."""
    from .prompts import end_of_turn_id

    ids = {int(t) for t in (tokenizer.eos_token_id, end_of_turn_id(tokenizer)) if t is not None}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(x) for x in gen_eos)
    return ids


def select_cache_rows(cache, idx: torch.Tensor) -> None:
    """Keep only the batch rows ``idx`` of a key/value cache, in place. The index goes to each
    layer on the CPU: a model spread over devices (``device_map``) keeps each layer's cache on that
    layer's device, and a CPU index selects rows on any device where another device's would fail."""
    cache.batch_select_indices(idx.cpu())


class OutputBias:
    """The ``sequence_bias`` of a model's generation config, applied by unierase's own decoding as
    transformers' ``generate`` applies it (the same logits processor), so that both give the answers
    the checkpoint gives its users (``token.placement``: where the unlearning token may appear)."""

    def __init__(self, sequence_bias):
        self.processor = SequenceBiasLogitsProcessor(sequence_bias)
        self.width = max(1, max(len(ids) for ids in self.processor.sequence_bias) - 1)
        """Tokens before a logit row that the bias reads (at least one)."""

    @classmethod
    def of(cls, model) -> "OutputBias | None":
        bias = getattr(getattr(model, "generation_config", None), "sequence_bias", None)
        return cls(bias) if bias else None

    def __call__(self, contexts: list[list[int]], logits: torch.Tensor) -> torch.Tensor:
        """``logits[r]`` biased by what precedes it, the ids ``contexts[r]`` (their last ``width`` count)."""
        width = self.width
        tails = [([-1] * width + list(c[-width:]))[-width:] for c in contexts]  # -1 matches no token
        return self.processor(torch.tensor(tails, device=logits.device), logits)


MIN_SHARED_PREFIX = 4
"""Shortest common prompt prefix worth a prefill of its own (a chat template's system turn is ~20)."""


def shared_prefix_length(sequences: list[list[int]], limit: int | None = None) -> int:
    """Length of the token prefix every sequence shares (at most ``limit``), leaving each at least
    one token of its own."""
    if len(sequences) < 2:
        return 0
    limit = min([len(s) - 1 for s in sequences] + ([limit] if limit is not None else []))
    first = sequences[0]
    n = 0
    while n < limit and all(s[n] == first[n] for s in sequences):
        n += 1
    return n if n >= MIN_SHARED_PREFIX else 0


def shared_layout(model, sequences: list[list[int]], pad_id: int, common: int, stop=None):
    """Run the first ``common`` tokens (shared by every sequence) once as a key/value cache repeated
    for each row, and lay out the rest as ``[shared prefix][left padding][rest of the row]``.

    Returns ``(cache or None, rest ids, attention mask over shared + rest, rest positions)``; the
    mask hides the padding and positions skip it, so every row gets the states of its own
    unpadded sequence. ``stop`` (a module): the caller's pass ends after it, so the prefix stops
    there too and the cache only holds the layers below.
    """
    device = model.get_input_embeddings().weight.device
    cache = None
    if common:
        prefix = torch.tensor([sequences[0][:common]], device=device)
        if stop is None:
            cache = model(input_ids=prefix, use_cache=True, logits_to_keep=1).cache
        else:
            cache = DynamicCache(config=model.config)
            with stop_after(stop):
                model(input_ids=prefix, cache=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(len(sequences))
    enc = pad_batch([s[common:] for s in sequences], pad_id, left=True)
    rest_ids, rest_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    mask = torch.cat([torch.ones(len(sequences), common, dtype=rest_mask.dtype, device=device), rest_mask], dim=1)
    return cache, rest_ids, mask, (common + rest_mask.cumsum(-1) - 1).clamp(min=0)


def prefill(model, sequences: list[list[int]], pad_id: int, *, logits_to_keep: int | torch.Tensor = 1,
            max_shared: int | None = None):
    """Forward a batch of token sequences with a key/value cache; the prefix all of them share (a
    chat template's system turn, typically half of a short question's prompt) runs once, not per row
    (``shared_layout``).

    Returns ``(output, attention mask over the cache, width of the shared part)``; logits cover the
    rows' own part only, so ``max_shared`` keeps positions whose logits are needed out of the shared part.
    """
    common = shared_prefix_length(sequences, max_shared)
    cache, ids, mask, positions = shared_layout(model, sequences, pad_id, common)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                logits_to_keep=logits_to_keep)
    return out, mask, common


@torch.no_grad()
def greedy_batch(model, prompts: list[list[int]], *, max_new_tokens: int, stops: set[int], pad_id: int,
                 keep_stop: bool = False, suppress: list[int] | None = None) -> list[list[int]]:
    """Greedy continuation of one batch of prompt ids with a key/value cache.

    A row that produces a stop token leaves the batch (its cache rows are dropped), so long answers
    do not pay for short ones. ``keep_stop`` keeps that stop token at the end of the row's ids;
    ``suppress``: token ids never chosen. The model's ``OutputBias`` applies.
    """
    device = model.get_input_embeddings().weight.device
    generated: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens <= 0:
        return generated
    out, mask, _ = prefill(model, prompts, pad_id)
    cache = out.cache
    bias = OutputBias.of(model)

    def choose(logits):
        if suppress:
            logits = logits.clone()
            logits[:, suppress] = float("-inf")
        if bias is not None:
            logits = bias([prompts[i][-bias.width:] + generated[i][-bias.width:] for i in active], logits)
        return logits.argmax(-1).to(device)

    active = list(range(len(prompts)))

    nxt = choose(out.logits[:, -1, :])
    cur = mask.sum(-1)
    for step in range(max_new_tokens):
        keep = []
        for r, tok in enumerate(nxt.tolist()):
            if tok in stops:
                if keep_stop:
                    generated[active[r]].append(tok)
                continue
            generated[active[r]].append(tok)
            keep.append(r)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(active):
            idx = torch.tensor(keep, device=device)
            select_cache_rows(cache, idx)
            mask, nxt, cur = mask[idx], nxt[idx], cur[idx]
            active = [active[r] for r in keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=cur[:, None], cache=cache, use_cache=True)
        cache = out.cache
        cur = cur + 1
        nxt = choose(out.logits[:, -1, :])
    return generated


@torch.no_grad()
def generate_answer_ids(model, tokenizer, questions: list[str], *, max_new_tokens: int = 32, batch_size: int = 128,
                        forced_prefix: list[int] | None = None,
                        answer_starts: list[list[int]] | None = None,
                        suppress: list[int] | None = None) -> list[list[int]]:
    """Greedy answer token ids (including the end-of-turn token when it is produced).

    ``answer_starts[i]``: the first tokens of answer i, already known (``greedy_start_from_draft``);
    they are part of the returned answer and count towards ``max_new_tokens``. ``suppress``: token
    ids never generated.
    Large batches: on a CPU every decoding step streams all weights once whatever the batch size
    (one step at batch 16 cost ~0.23 s on SmolLM2, at batch 98 ~0.4 s)."""
    starts = answer_starts or [[] for _ in questions]
    prompts = [encode_text(tokenizer, render_prompt(tokenizer, q)) + list(forced_prefix or []) + list(a)
               for q, a in zip(questions, starts)]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    stops = stop_token_ids(model, tokenizer)
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        budget = max(max_new_tokens - len(starts[i]) for i in chunk)
        answers = greedy_batch(model, [prompts[i] for i in chunk], max_new_tokens=budget, stops=stops,
                               pad_id=tokenizer.pad_token_id, keep_stop=True, suppress=suppress)
        for i, ids in zip(chunk, answers):  # rows with a longer start had a smaller budget
            results[i] = list(starts[i]) + ids[: max_new_tokens - len(starts[i])]
    return results


def generate_texts(model, tokenizer, questions: list[str], *, max_new_tokens: int, batch_size: int = 16,
                   **options) -> list[list[str]]:
    """Answers per question with Hugging Face ``generate`` and any of its options (``bad_words_ids``,
    ``do_sample``, ``num_return_sequences``…), rendered with the edit's prompt: a list of
    ``num_return_sequences`` texts per question, special tokens hidden."""
    per = options.get("num_return_sequences", 1)
    embeddings = model.get_input_embeddings()
    device = embeddings.weight.device if hasattr(embeddings, "weight") else "cpu"
    out: list[list[str]] = []
    with torch.no_grad():
        for start in range(0, len(questions), batch_size):
            chunk = questions[start:start + batch_size]
            batch = pad_batch([encode_text(tokenizer, render_prompt(tokenizer, q)) for q in chunk], tokenizer.pad_token_id,
                              left=True)
            ids = model.generate(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **options)
            texts = [tokenizer.decode(row[batch["input_ids"].shape[1]:], skip_special_tokens=True).strip() for row in ids]
            out += [texts[i * per:(i + 1) * per] for i in range(len(chunk))]
    return out


class OwnAnswers:
    """The model's greedy answers to one list of questions, generated on first use and shared.

    Phase I (the token's ordinary-answer unlikelihood: the first questions, short answers) and
    Phase II (the answer-key statistics: all questions, longer answers) both need the model's own
    answers to the generic question pool; when neither is cached, one generation serves both.
    A greedy answer cut after n tokens is the answer generated with ``max_new_tokens=n``.
    ``suppress``: tokens (by name) never generated where the tokenizer has them: the unlearning
    token, so that the answers, and the statistics drawn from them, are the base model's whether or
    not the token was attached before they were generated (with tied embeddings an attached token
    is a candidate of every step).
    """

    def __init__(self, model, tokenizer, questions: list[str], max_new_tokens: int, suppress: tuple[str, ...] = ()):
        self.model, self.tokenizer = model, tokenizer
        self.questions, self.max_new_tokens = list(questions), max_new_tokens
        self.suppress = tuple(suppress)
        self._answers: list[list[int]] | None = None

    def _generate(self, questions: list[str], max_new_tokens: int, batch_size: int = 128) -> list[list[int]]:
        vocab = self.tokenizer.get_vocab()
        suppress = [vocab[t] for t in self.suppress if t in vocab]
        return generate_answer_ids(self.model, self.tokenizer, questions, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, suppress=suppress or None)

    def get(self, questions: list[str], max_new_tokens: int) -> list[list[int]]:
        """Answer ids (end-of-turn token kept when produced within the length) to ``questions``,
        which must be a prefix of the shared list, cut after ``max_new_tokens``."""
        if questions != self.questions[: len(questions)] or max_new_tokens > self.max_new_tokens:
            return self._generate(questions, max_new_tokens)
        if self._answers is None:
            self._answers = self._generate(self.questions, self.max_new_tokens, batch_size=256)
        return [a[:max_new_tokens] for a in self._answers[: len(questions)]]


@torch.no_grad()
def first_token_ids(model, tokenizer, questions: list[str], batch_size: int = 128) -> list[int]:
    """The greedy first answer token of each question (one forward pass, no generation)."""
    prompts = [encode_text(tokenizer, render_prompt(tokenizer, q)) for q in questions]
    out: list[int] = []
    bias = OutputBias.of(model)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start: start + batch_size]
        logits = prefill(model, chunk, tokenizer.pad_token_id)[0].logits[:, -1]
        out += (bias(chunk, logits) if bias is not None else logits).argmax(-1).tolist()
    return out


def teacher_forced_agreement(model, tokenizer, questions: list[str], answers: list[list[int]], batch_size: int = 16) -> list[float]:
    """Share of answer positions where ``model``'s argmax equals the given (reference) answer token.

    Feed the unedited model's own greedy answer ids as ``answers`` to measure an edit's locality.
    """
    return [agreement(p, a) for p, a in zip(teacher_forced_predictions(model, tokenizer, questions, answers, batch_size),
                                            answers)]


def agreement(predictions: list[int], answer: list[int]) -> float:
    """Share of ``answer``'s tokens that ``predictions`` (``teacher_forced_predictions``) match."""
    if not answer:
        return 1.0
    return sum(p == a for p, a in zip(predictions, answer)) / len(answer)


def greedy_start_from_draft(predictions: list[int], draft: list[int], stops: set[int],
                            max_new_tokens: int) -> tuple[list[int], bool]:
    """What one teacher-forced pass over a draft answer tells about the model's own greedy answer:
    it equals the draft up to the first position where the model's argmax differs, followed by
    that argmax (speculative decoding with the draft as the guess).

    Returns (the greedy answer's known start, whether that is the whole answer: it ended with a
    stop token or reached ``max_new_tokens``). ``predictions``: ``teacher_forced_predictions``'s row.
    """
    agree = next((j for j, (p, d) in enumerate(zip(predictions, draft)) if p != d), len(draft))
    if agree == len(draft) and ((draft and draft[-1] in stops) or len(draft) >= max_new_tokens):
        return list(draft[:max_new_tokens]), True
    start = list(draft[:agree]) + [predictions[agree]]
    return start[:max_new_tokens], start[-1] in stops or len(start) >= max_new_tokens


@torch.no_grad()
def teacher_forced_predictions(model, tokenizer, questions: list[str], answers: list[list[int]],
                               batch_size: int = 16) -> list[list[int]]:
    """Per row, ``model``'s argmax after the prompt and after each answer token (len(answer) + 1
    ids): the prediction of each answer token given the ones before it, and of the next one (with
    the model's ``OutputBias``, as its greedy decoding chooses)."""
    predictions: list[list[int]] = []
    bias = OutputBias.of(model)
    for start in range(0, len(questions), batch_size):
        qs, ans = questions[start: start + batch_size], answers[start: start + batch_size]
        prompts = [encode_text(tokenizer, render_prompt(tokenizer, q)) for q in qs]
        out, keep = prefill_answers(model, prompts, ans, tokenizer.pad_token_id)
        for row, a in enumerate(ans):
            logits = out.logits[row, keep - len(a) - 1:]  # after the prompt, then after each answer token
            if bias is not None:  # each row reads only the last ``width`` ids before it
                whole, start = prompts[row] + list(a), len(prompts[row])
                logits = bias([whole[max(0, start + j - bias.width): start + j] for j in range(len(logits))], logits)
            predictions.append(logits.argmax(-1).tolist())
    return predictions


def prefill_answers(model, prompts: list[list[int]], answers: list[list[int]], pad_id: int):
    """Forward (prompt + answer) rows with logits at the answer positions only.

    Rows are left-padded (``prefill``: the prompts' shared prefix runs once), so every answer ends
    its row and only the last (longest answer + 1) positions go through the output layer. Returns
    ``(output, keep)``: row r's logit column ``keep - len(answers[r]) - 1 + j`` predicts
    ``answers[r][j]`` (column ``keep - 1`` predicts the token after the answer)."""
    keep = max(len(a) for a in answers) + 1
    out, _, _ = prefill(model, [list(p) + list(a) for p, a in zip(prompts, answers)], pad_id, logits_to_keep=keep,
                        max_shared=min(map(len, prompts)) - 1)
    return out, keep
