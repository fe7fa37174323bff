"""Preserved-key statistics C₀ = E[k kᵀ] per edited layer, and the null-space projector.

Keys are streamed through the model batch by batch and accumulated in fp64; no key matrix is ever
held. The forward pass stops after the deepest requested layer. Results are cached per
(model fingerprint, corpus, token count, code) under ``<cache>/stats`` (``cache.Cache``); C₀ and
its null space, assembled from them, by ``preserved.build_preserved_keys``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..models.adapters import MLPOutputAdapter
from ..models.tracing import stop_after
from ..generation import MIN_SHARED_PREFIX, shared_layout, shared_prefix_length
from ..prompts import PINNED_DATE, encode_text, has_chat_template, render_prompt
from ..cache import Cache, code_digest, content_key
from .. import distributed
from . import corpus as corpus_module

log = logging.getLogger(__name__)


@dataclass
class KeyStatistics:
    """Uncentred second moments of keys per layer: ``moments[l] = Σ k kᵀ`` over ``count`` corpus
    tokens, and ``question_moments[l]`` over ``question_count`` entity tokens of chat questions."""

    moments: dict[int, torch.Tensor]
    count: int
    corpus: str
    question_moments: dict[int, torch.Tensor] | None = None
    question_count: int = 0
    refusal_moments: dict[int, torch.Tensor] | None = None
    """Σ k kᵀ over the answer positions of ``question → [UNL] refusal <eos>`` (needs the token;
    not cached with the rest, see ``accumulate_refusal_key_moments``)."""
    refusal_count: int = 0
    answer_moments: dict[int, torch.Tensor] | None = None
    """Σ k kᵀ over the answer positions of the model's own greedy answers to generic questions."""
    answer_count: int = 0
    rare_name_moments: dict[int, torch.Tensor] | None = None
    """Σ k kᵀ over the answer positions of answers naming invented people (``corpus.rare_name_answers``;
    computed on demand like the refusal moments, see ``accumulate_rare_name_key_moments``)."""
    rare_name_count: int = 0

    def _families(self) -> list[tuple[dict[int, torch.Tensor] | None, int]]:
        """(moment sums, count) of every family, in ``covariance``'s order of weights."""
        return [(self.moments, self.count), (self.question_moments, self.question_count),
                (self.refusal_moments, self.refusal_count), (self.answer_moments, self.answer_count),
                (self.rare_name_moments, self.rare_name_count)]

    def drop(self, layer: int) -> None:
        """Free ``layer``'s moment sums (once its C₀ is built: an m × m matrix per family and layer)."""
        for family, _ in self._families():
            if family:
                family.pop(layer, None)

    def covariance(self, layer: int, question_weight: float = 0.0, refusal_weight: float = 0.0,
                   answer_weight: float = 0.0, rare_name_weight: float = 0.0, *, per_family: bool = False) -> torch.Tensor:
        """C₀ = E[k kᵀ] over corpus tokens + ``question_weight`` · E[k kᵀ] over question entity keys
        + ``refusal_weight`` · E[k kᵀ] over the token's refusal answers + ``answer_weight`` · E[k kᵀ]
        over the model's own answers + ``rare_name_weight`` · E[k kᵀ] over answers naming invented
        people. ``per_family``: each family's E[k kᵀ] divided by its own largest eigenvalue first, so
        a family of much larger keys cannot push the others' directions under a threshold relative
        to the whole's largest eigenvalue."""
        weights = (1.0, question_weight, refusal_weight, answer_weight, rare_name_weight)
        families = [(w, moments, count) for w, (moments, count) in zip(weights, self._families())]
        cov = None
        for weight, moments, count in families:
            if not weight or not moments:
                continue
            part = moments[layer] / max(count, 1)
            if per_family:
                part = part / largest_eigenvalue(part)
            cov = weight * part if cov is None else cov + weight * part
        return cov


def moment_accumulators(adapter: MLPOutputAdapter, layers: list[int]) -> dict[int, torch.Tensor]:
    """A zero m × m running sum per layer, on the device of that layer's weight, in fp64 (fp32 on a
    device without fp64, such as Apple's MPS: a stated loss of precision in the sums). Summing
    where the keys are moves each m × m product nowhere; the sums stay there (C₀ is built and
    decomposed on that device) and go to the host one layer at a time, to be cached."""
    out = {}
    for layer in layers:
        device = adapter.mlp_output(layer).weight.device
        dtype = torch.float32 if device.type == "mps" else torch.float64
        out[layer] = torch.zeros(adapter.key_dim(layer), adapter.key_dim(layer), dtype=dtype, device=device)
    return out


def linalg_device(device) -> torch.device:
    """Where C₀'s eigendecomposition and the solves run in fp64: the edited weight's own device, or
    the CPU for one without fp64 (Apple's MPS)."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


def add_moment(accumulator: torch.Tensor, keys: torch.Tensor, weight: float = 1.0) -> None:
    """``accumulator += weight · keysᵀ keys``: each batch's product in fp32 where the keys are, the
    running sum in the accumulator's dtype on its device (``moment_accumulators``). fp32 is ample
    within one batch (its rounding is ~1e-7 of the largest eigenvalue; the null space starts at
    3e-3 of it) and twice as fast as fp64."""
    keys = keys.float().to(accumulator.device)
    product = (keys.T @ keys).to(accumulator.dtype)
    accumulator.add_(product if weight == 1.0 else weight * product)


def corpus_token_batches(tokenizer, num_tokens: int, max_length: int, batch_size: int, seed: int = 0):
    """Yield lists of token-id sequences from the synthetic corpus until ``num_tokens`` are produced."""
    chat = has_chat_template(tokenizer)
    produced = 0
    batch: list[list[int]] = []
    for user, assistant in corpus_module.documents(seed):
        if assistant is not None and chat:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], tokenize=False,
                date_string=PINNED_DATE)
            ids = encode_text(tokenizer, text)
        elif assistant is not None:
            ids = encode_text(tokenizer, render_prompt(tokenizer, user, chat=False) + " " + assistant)
        else:
            ids = tokenizer(user, add_special_tokens=True)["input_ids"]
        ids = list(ids)[:max_length]
        batch.append(ids)
        produced += len(ids)
        if len(batch) == batch_size or produced >= num_tokens:
            yield batch
            batch = []
        if produced >= num_tokens:
            return


def _batch_order(sequence: list[int]):
    """Sequences sorted by this are batched with those sharing their first tokens and length."""
    return sequence[:MIN_SHARED_PREFIX], len(sequence)


@torch.no_grad()
def sequence_moments(model, adapter: MLPOutputAdapter, layers: list[int], sequences: list[list[int]], pad_id: int, *,
                     batch_size: int = 16, bar=None) -> tuple[dict[int, torch.Tensor], int]:
    """Σ k kᵀ of the MLP-output-projection inputs at ``layers`` over every token of ``sequences``.

    Exact, but cheaper than a forward pass per padded batch: sequences are batched by their first
    tokens and length (little padding), and the prefix a batch shares (the chat template's system
    turn, ~20 tokens of every chat document) runs once and counts once per row. The pass stops
    after the deepest layer.
    """
    moments = moment_accumulators(adapter, layers)
    current: dict = {}

    def make_hook(layer):
        def hook(_module, args):
            keys = args[0].detach()
            add_moment(moments[layer], keys[current["mask"].to(keys.device).bool()], current["weight"])
        return hook

    order = sorted(range(len(sequences)), key=lambda i: _batch_order(sequences[i]))
    count = 0
    handles = [adapter.mlp_output(l).register_forward_pre_hook(make_hook(l)) for l in layers]
    try:
        for start in range(0, len(order), batch_size):
            batch = [sequences[i] for i in order[start: start + batch_size]]
            common = shared_prefix_length(batch)
            # the shared prefix runs once (inside shared_layout), its keys weighted by the number of rows
            current.update(mask=torch.ones(1, common), weight=float(len(batch)))
            cache, ids, mask, positions = shared_layout(model, batch, pad_id, common, stop=adapter.mlp_output(max(layers)))
            current.update(mask=mask[:, common:], weight=1.0)
            with stop_after(adapter.mlp_output(max(layers))):
                model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=cache is not None)
            n = sum(map(len, batch))
            count += n
            if bar is not None:
                bar.update(n)
    finally:
        for h in handles:
            h.remove()
    return moments, count


def accumulate_key_moments(model, tokenizer, adapter: MLPOutputAdapter, layers: list[int], *, num_tokens: int,
                           max_length: int = 128, batch_size: int = 16, seed: int = 0,
                           extra_texts: list[list[int]] | None = None, progress: bool = True) -> KeyStatistics:
    """Σ k kᵀ of the MLP-output-projection inputs at ``layers`` over the corpus (and ``extra_texts``).
    In several processes (``distributed``) each rank runs its shard and the sums are combined."""
    sequences = [seq for batch in corpus_token_batches(tokenizer, num_tokens, max_length, batch_size, seed) for seq in batch]
    sequences += list(extra_texts or [])
    # shard in the order sequence_moments batches them, so each rank's batches share prefixes as one process's do
    sequences = distributed.shard(sorted(sequences, key=_batch_order))
    with tqdm(total=sum(map(len, sequences)), desc="key statistics", unit="tok", disable=not progress) as bar:
        moments, count = sequence_moments(model, adapter, layers, sequences, tokenizer.pad_token_id,
                                          batch_size=batch_size, bar=bar)
    q_moments, q_count = accumulate_question_key_moments(model, tokenizer, adapter, layers, batch_size=batch_size * 2)
    return KeyStatistics(_summed(moments), distributed.all_reduce_count(count), corpus_module.CORPUS_ID,
                         _summed(q_moments), q_count)


def _summed(moments: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Each layer's moment summed over the processes (itself in one process)."""
    return {layer: distributed.all_reduce_sum(m) for layer, m in moments.items()}


def accumulate_question_key_moments(model, tokenizer, adapter: MLPOutputAdapter, layers: list[int], batch_size: int = 32):
    """Σ k kᵀ at the entity token of every synthetic chat question (see ``corpus.entity_questions``).

    One forward pass per batch records every layer's keys and stops after the deepest layer.
    """
    from .keys import at_key, capture_prompts
    from .prompts import build_edit_prompts

    moments = moment_accumulators(adapter, layers)
    questions = corpus_module.entity_questions()
    prompts = distributed.shard([build_edit_prompts(tokenizer, q, i, end, 0)[0] for i, (q, end) in enumerate(questions)])
    modules = {l: adapter.mlp_output(l) for l in layers}
    for _, captured, _, key_idx in capture_prompts(model, modules, prompts, tokenizer.pad_token_id, batch_size=batch_size):
        for layer in layers:
            add_moment(moments[layer], at_key(captured[layer], key_idx))
    return moments, len(questions)


def accumulate_refusal_key_moments(model, tokenizer, adapter: MLPOutputAdapter, layers: list[int], token_id: int,
                                   num_questions: int = 96, batch_size: int = 16,
                                   refusal: str | None = None) -> tuple[dict[int, torch.Tensor], int]:
    """Σ k kᵀ over every answer position of ``question → [UNL] refusal <eos>`` (generic questions).

    Preserving these keys keeps the edit from firing where the model reads the unlearning token and
    writes the refusal; without them the edit's push towards ``[UNL]`` also acts there, and the
    refusal after ``[UNL]`` degenerates into an immediate end of turn or repeated tokens.
    """
    from ..prompts import has_chat_template
    from ..refusals import refusal_for, refusal_pool
    from ..token.questions import training_questions
    from ..token.training import answer_ids

    chat, refusals = has_chat_template(tokenizer), refusal_pool(refusal)
    texts = []
    for q in training_questions(num_questions):
        prompt = encode_text(tokenizer, render_prompt(tokenizer, q))
        texts.append((prompt, answer_ids(tokenizer, refusal_for(q, refusals), token_id, chat)))
    return answer_position_moments(model, tokenizer, adapter, layers, texts, batch_size=batch_size)


RARE_NAMES = 200
"""Invented people whose answers join C₀ when ``EditConfig.rare_name_key_weight`` > 0."""


def accumulate_rare_name_key_moments(model, tokenizer, adapter: MLPOutputAdapter, layers: list[int], count: int,
                                     batch_size: int = 16) -> tuple[dict[int, torch.Tensor], int]:
    """Σ k kᵀ over every answer position of ``count`` questions about invented people answered with
    a sentence naming them (``corpus.rare_name_answers``), in the model's format.

    An erased person's name is cut into pieces whose early-layer keys share a direction with the
    pieces of every other unfamiliar name; the famous names of the corpus leave that direction
    free, and the edit then fires inside other people's names mid-answer; preserving these keys
    is meant to take that direction away from the edit."""
    from ..prompts import answer_separator, has_chat_template

    chat = has_chat_template(tokenizer)
    texts = [(encode_text(tokenizer, render_prompt(tokenizer, q)),
              tokenizer(answer_separator(chat) + a, add_special_tokens=False)["input_ids"])
             for q, a in corpus_module.rare_name_answers(count)]
    moments, total = answer_position_moments(model, tokenizer, adapter, layers, distributed.shard(texts),
                                             batch_size=batch_size)
    return _summed(moments), distributed.all_reduce_count(total)


ANSWER_KEY_TOKENS = 64
"""Length of the model's own answers whose keys join C₀ (``accumulate_answer_key_moments``)."""


@torch.no_grad()
def accumulate_answer_key_moments(model, tokenizer, adapter: MLPOutputAdapter, layers: list[int],
                                  num_questions: int | None = None, max_new_tokens: int = ANSWER_KEY_TOKENS,
                                  batch_size: int = 16,
                                  own_answers=None) -> tuple[dict[int, torch.Tensor], int]:
    """Σ k kᵀ over every position of the model's own greedy answers to the generic question pool.

    Teacher-forced locality is measured on exactly such text (an unrelated question followed by
    the model's own answer); template sentences cover it only partly, so the keys the model forms
    while writing fluent answers are preserved directly. The pool (``token.questions``: fictional
    people, places and materials) shares no question or entity with the demo facts.
    ``own_answers`` (``generation.OwnAnswers``) shares the answers with the token's training; without
    it they are generated here.
    """
    from ..generation import OwnAnswers
    from ..token.questions import training_questions

    questions = training_questions(num_questions)
    if distributed.rank_and_size()[1] > 1:  # each rank answers and scores its shard of the questions
        questions, own_answers = distributed.shard(questions), None
    own_answers = own_answers or OwnAnswers(model, tokenizer, questions, max_new_tokens)
    answers = own_answers.get(questions, max_new_tokens)
    prompts = [encode_text(tokenizer, render_prompt(tokenizer, q)) for q in questions]
    moments, count = answer_position_moments(model, tokenizer, adapter, layers,
                                             [(p, a) for p, a in zip(prompts, answers) if a], batch_size=batch_size)
    return _summed(moments), distributed.all_reduce_count(count)


@torch.no_grad()
def answer_position_moments(model, tokenizer, adapter: MLPOutputAdapter, layers: list[int],
                            texts: list[tuple[list[int], list[int]]], batch_size: int = 16):
    """Σ k kᵀ over the answer positions of (prompt ids, answer ids) pairs (teacher forced)."""
    from .keys import capture_prompts
    from .prompts import EditPrompt

    prompts = [EditPrompt(i, 0, list(p) + list(a), len(p), (0, len(p))) for i, (p, a) in enumerate(texts)]
    moments = moment_accumulators(adapter, layers)
    count = 0
    modules = {l: adapter.mlp_output(l) for l in layers}
    for chunk, captured, starts, _ in capture_prompts(model, modules, prompts, tokenizer.pad_token_id, batch_size=batch_size):
        width = captured[layers[0]].shape[1]
        first = starts + torch.tensor([p.key_index for p in chunk])  # rows are left-padded: answers run to the end
        answer = torch.arange(width)[None, :] >= first[:, None]
        for layer in layers:
            add_moment(moments[layer], captured[layer][answer.to(captured[layer].device)])
        count += int(answer.sum())
    return moments, count


class StatisticsCache:
    """Cached key statistics: one ``cache.Cache`` entry per (model, corpus, token count, code) with
    a ``layer<l>.safetensors`` per layer, so other layers of the same model are added later."""

    KIND = "stats"

    def __init__(self, root: str | Path):
        self.cache = Cache(root)

    def _key(self, fingerprint: str, corpus: str, num_tokens: int) -> str:
        from . import stats

        return content_key(fingerprint, corpus, num_tokens, code_digest(corpus_module, stats))

    def folder(self, fingerprint: str, corpus: str, num_tokens: int) -> Path:
        return self.cache.entry(self.KIND, self._key(fingerprint, corpus, num_tokens))

    def load(self, fingerprint: str, corpus: str, num_tokens: int, layers: list[int]) -> KeyStatistics | None:
        key = self._key(fingerprint, corpus, num_tokens)
        moments, count, q_moments, q_count, a_moments, a_count = {}, None, {}, 0, {}, 0
        for layer in layers:
            data = self.cache.load_tensors(self.KIND, key, f"layer{layer}.safetensors")
            if data is None:
                return None
            moments[layer] = data["moment"]
            count = int(data["count"].item())
            q_moments[layer] = data["question_moment"]
            q_count = int(data["question_count"].item())
            if "answer_moment" in data:
                a_moments[layer] = data["answer_moment"]
                a_count = int(data["answer_count"].item())
        stats = KeyStatistics(moments, count or 0, corpus, q_moments, q_count)
        if len(a_moments) == len(layers):
            stats.answer_moments, stats.answer_count = a_moments, a_count
        return stats

    def save(self, fingerprint: str, stats: KeyStatistics, num_tokens: int) -> None:
        key = self._key(fingerprint, stats.corpus, num_tokens)
        for layer, moment in stats.moments.items():
            # one layer's sums on the host at a time
            tensors = {"moment": moment.cpu(), "count": torch.tensor([stats.count]),
                       "question_moment": stats.question_moments[layer].cpu(),
                       "question_count": torch.tensor([stats.question_count])}
            if stats.answer_moments:
                tensors["answer_moment"] = stats.answer_moments[layer].cpu()
                tensors["answer_count"] = torch.tensor([stats.answer_count])
            self.cache.save_tensors(self.KIND, key, tensors, f"layer{layer}.safetensors")
            del tensors


def get_key_statistics(model, tokenizer, adapter, layers, *, fingerprint: str, cache_dir, num_tokens: int,
                       progress: bool = True, own_answers=None) -> tuple[KeyStatistics, float]:
    """Load cached statistics or compute the missing layers; returns (stats, seconds spent computing)."""
    cache = StatisticsCache(cache_dir)
    stats = cache.load(fingerprint, corpus_module.CORPUS_ID, num_tokens, layers)
    started = time.perf_counter()
    if stats is not None and stats.answer_moments:
        log.info("key statistics for layers %s loaded from cache (%d tokens)", layers, stats.count)
        return stats, 0.0
    if stats is None:
        log.info("computing key statistics for layers %s over %d corpus tokens (once per model)", layers, num_tokens)
        stats = accumulate_key_moments(model, tokenizer, adapter, layers, num_tokens=num_tokens, progress=progress)
    log.info("computing key statistics of the model's own answers to generic questions (once per model)")
    stats.answer_moments, stats.answer_count = accumulate_answer_key_moments(model, tokenizer, adapter, layers,
                                                                             own_answers=own_answers)
    if distributed.is_main():  # every rank holds the same sums; one writes them
        cache.save(fingerprint, stats, num_tokens)
    distributed.barrier()
    return stats, time.perf_counter() - started


def largest_eigenvalue(matrix: torch.Tensor, iterations: int = 100) -> float:
    """λ_max of a symmetric PSD matrix by power iteration: O(m²) per step where ``eigh`` is O(m³),
    and a threshold relative to it needs no more than a few digits."""
    start = torch.randn(matrix.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    vector = start.to(device=matrix.device, dtype=matrix.dtype)  # random: no fixed vector is safe from ⟂
    value = 0.0
    for _ in range(iterations):
        product = matrix @ vector
        norm = torch.linalg.vector_norm(product)
        if norm == 0:
            return 1.0  # an all-zero family contributes nothing whatever it is divided by
        vector, value = product / norm, float(norm)
    return value


def null_space_basis(covariance: torch.Tensor, *, relative_threshold: float) -> torch.Tensor:
    """Û (m × r, fp64, orthonormal columns): the eigenvectors of C₀ whose eigenvalue is below
    ``relative_threshold`` × the largest one. A relative threshold adapts to each model's key scale."""
    cov = covariance.to(torch.float64)
    eigenvalues, eigenvectors = torch.linalg.eigh((cov + cov.T) / 2)
    return eigenvectors[:, eigenvalues < relative_threshold * eigenvalues.max()]


def null_space_projector(covariance: torch.Tensor, *, relative_threshold: float) -> tuple[torch.Tensor, int]:
    """P = Û Ûᵀ (``null_space_basis``) in fp64, and the null dimension r."""
    basis = null_space_basis(covariance, relative_threshold=relative_threshold)
    return basis @ basis.T, basis.shape[1]
