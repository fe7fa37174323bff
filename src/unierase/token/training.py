"""Phase I: add the unlearning token and train its embedding so that it leads into a refusal.

Only the new token's row(s) change: the input-embedding row, and optionally its output (lm_head)
row. A model with tied embeddings gets an output layer of its own first (``own_output_row``), so
the one row does not have to both lead into the refusal and stay unlikely in ordinary text. Each
training example is ``question → [UNL] refusal <eos>``; the refusal and the end-of-turn token are
scored, the question and ``[UNL]`` are not. The prompt never contains ``[UNL]``, so its forward pass runs once without
gradients and is reused as a key/value cache: only the short answer part is back-propagated.
An unlikelihood term at the answer start keeps ``[UNL]`` from becoming a greedy first token on
unedited prompts.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from ..models.adapters import find_mlp_output
from ..models.precision import same_logits
from ..models.tracing import edit_output, trace
from ..generation import prefill, prefill_answers, select_cache_rows, shared_layout, shared_prefix_length
from ..prompts import answer_separator, encode_text, end_of_turn_id, has_chat_template, pad_batch, render_prompt
from ..refusals import DEFAULT_REFUSAL, refusal_for, refusal_pool
from .questions import training_questions

log = logging.getLogger(__name__)

UNL_TOKEN = "<|unlearn|>"
"""The unlearning token's string (a special token: hidden by ``skip_special_tokens=True``)."""


@dataclass
class UnlearningTokenConfig:
    """How the unlearning token is trained (defaults measured on SmolLM2-135M-Instruct)."""

    token: str = UNL_TOKEN
    """String of the new special token."""
    num_questions: int = 96
    """How many questions of the generic pool (``token.questions``) to train on."""
    plain_epochs: int = 1
    """Epochs on the plain ``Question:/Answer:`` format first (cheap, shapes the row quickly)."""
    plain_lr: float = 5e-2
    """Adam learning rate of the plain stage."""
    chat_epochs: int = 3
    """Epochs on chat-template examples (plain format when the tokenizer has no template)."""
    chat_lr: float = 3e-2
    """Adam learning rate of the chat stage."""
    augment_epochs: int = 2
    """Epochs with noise on the edited layers' weights, so the token survives the coming edit."""
    augment_lr: float = 1e-2
    """Adam learning rate of the augmentation stage."""
    noise_scale: float = 0.01
    """Noise σ as a fraction of std(W_l) of each edited layer (computed in fp32)."""
    context_noise: float = 0.5
    """In the augmentation stage, also shift the last edited layer's output at one random question
    token by this fraction of its norm (random direction): the edit shifts exactly such a state,
    so the token learns to lead into the refusal from an edited context too."""
    batch_size: int = 8
    """Examples per optimisation step."""
    own_output_row: bool = True
    """On a model with tied embeddings, untie the output layer (a copy of the embedding; the saved
    checkpoint then has vocabulary × hidden more parameters) so the token's output row is its own:
    tied, the row that leads into the refusal is also scored in every answer and turns up mid-answer."""
    max_row_norm: float | None = None
    """The token's input row is kept within this multiple of the largest norm among the
    vocabulary's own rows (projected after each step; None: unbounded, the default — measured in
    docs/design.md, "Any model")."""
    output_ceiling: float = -20.0
    """log p([UNL]) the separate output row is lowered to at every position of the model's ordinary
    answers and of its refusals (``fit_output_row``): what the edit adds elsewhere stays far from greedy."""
    unlikelihood_weight: float = 1.0
    """Tied row only: weight of −log(1 − p([UNL])) at the answer start of unedited prompts."""
    ordinary_unlikelihood_weight: float = 1.0
    """Tied row only: weight of −log(1 − p([UNL])) at every position of the model's own ordinary
    answers (generated once before training), so the shared row does not turn up in normal answers."""
    ordinary_answer_tokens: int = 32
    """Length of those greedy ordinary answers."""
    ordinary_questions: int | None = None
    """How many questions of the generic pool those ordinary answers answer (tied row); ``None``: the
    training questions (``num_questions``). More cost little: the term reads precomputed hidden states."""
    ceiling_questions: int | None = None
    """Questions of the generic pool whose answers the own output row's ceiling is fitted on
    (``None``: the whole pool; fewer left the token likely deep in longer answers)."""
    ceiling_answer_tokens: int = 64
    """Length of those answers (the statistics' own answers are as long: one generation serves both)."""
    seed: int = 0
    """Seed for the example order and the augmentation noise."""
    refusal: str | None = DEFAULT_REFUSAL
    """The one sentence the token leads into (``EditConfig.refusal``); ``None``: the bundled pool."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TokenTrainingReport:
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    output_row: dict | None = None
    """What ``fit_output_row`` did (a separate output row only)."""


def untie_output_embeddings(model) -> bool:
    """Give a model with tied embeddings an output layer of its own (a copy); whether it was tied."""
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or out.weight is not emb.weight:
        return False
    out.weight = torch.nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = False
    return True


def add_unlearning_token(model, tokenizer, token: str = UNL_TOKEN, own_output_row: bool = False) -> int:
    """Add ``token`` as a special token (idempotent); a new row starts at the mean row. With
    ``own_output_row`` a tied model is untied first (``untie_output_embeddings``)."""
    if token in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids(token)
    if own_output_row:
        untie_output_embeddings(model)
    tokenizer.add_tokens([token], special_tokens=True)
    token_id = tokenizer.convert_tokens_to_ids(token)
    old_rows = model.get_input_embeddings().weight.shape[0]
    if token_id >= old_rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[token_id] = emb[:old_rows].float().mean(0).to(emb.dtype)
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.data_ptr():
            out.weight[token_id] = out.weight[:old_rows].float().mean(0).to(out.weight.dtype)
            if getattr(out, "bias", None) is not None:
                out.bias[token_id] = out.bias[:old_rows].min()
    return token_id


def token_rows(model) -> list[torch.Tensor]:
    """The weights that hold a row of the token: the input embedding, and the output layer when separate."""
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    return [emb] + ([out.weight] if out is not None and out.weight.data_ptr() != emb.data_ptr() else [])


def _model_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


def answer_ids(tokenizer, refusal: str, token_id: int, chat: bool) -> list[int]:
    """``[UNL] refusal <eos>`` as token ids (what the token is trained to lead into)."""
    body = tokenizer(answer_separator(chat) + refusal, add_special_tokens=False)["input_ids"]
    return [token_id] + list(body) + [end_of_turn_id(tokenizer)]


@dataclass
class PromptPass:
    """A batch's prompt pass: key/value cache, attention mask, and the logits and output-layer input
    at the answer start (what the loss needs from the prompt; the prompt never contains ``[UNL]``)."""

    cache: object
    mask: torch.Tensor
    start_logits: torch.Tensor
    start_hidden: torch.Tensor

    def select(self, rows: list[int]) -> "PromptPass":
        idx = torch.tensor(rows, device=self.mask.device)
        cache = copy.deepcopy(self.cache)
        select_cache_rows(cache, idx)
        return PromptPass(cache, self.mask[idx], self.start_logits[idx.to(self.start_logits.device)],
                          self.start_hidden[idx.to(self.start_hidden.device)])


@torch.no_grad()
def prompt_pass(model, tokenizer, questions: list[str], chat: bool, context_shift: tuple | None = None) -> PromptPass:
    """Run the prompts of ``questions`` once (no gradient: nothing in them is trained).

    ``context_shift = (block, scale, generator)`` shifts ``block``'s output at one random token of
    the prompt's second half by ``scale``·‖h‖ in a random direction during the pass. The prompts'
    shared template prefix runs once for the whole batch (with a shift, only the part before the
    first shifted token).
    """
    device = _model_device(model)
    prompts = [encode_text(tokenizer, render_prompt(tokenizer, q, chat=chat)) for q in questions]
    head_w = model.get_output_embeddings()
    if context_shift is None:
        with trace(head_w, keep_input=True) as head:
            out, mask, _ = prefill(model, prompts, tokenizer.pad_token_id)
        return PromptPass(out.cache, mask, out.logits[:, -1].float(), head.input[:, -1])
    block, scale, generator = context_shift
    lengths = [len(p) for p in prompts]
    # a token in the second half of each prompt, before the template's closing tokens
    offsets = [int(torch.randint(max(1, n // 2), max(2, n - 4), (1,), generator=generator)) for n in lengths]
    common = shared_prefix_length(prompts, limit=min(offsets))  # the shared part ends before any shifted token
    cache, p_ids, p_mask, p_pos = shared_layout(model, prompts, tokenizer.pad_token_id, common)
    width = p_ids.shape[1]  # rows are [shared][left padding][rest]: prompt token o sits at width - n + o of the rest
    positions = torch.tensor([width - n + o for n, o in zip(lengths, offsets)], device=device)
    rows = torch.arange(len(questions), device=device)

    def add_shift(hidden):
        at = hidden.device
        picked = hidden[rows.to(at), positions.to(at)]
        direction = torch.randn(picked.shape, generator=generator).to(hidden)
        direction = direction / direction.norm(dim=-1, keepdim=True) * picked.norm(dim=-1, keepdim=True) * scale
        return hidden.index_put((rows.to(at), positions.to(at)), direction, accumulate=True)

    with edit_output(block, add_shift), trace(head_w, keep_input=True) as head:
        out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, cache=cache, use_cache=True,
                    logits_to_keep=1)
    return PromptPass(out.cache, p_mask, out.logits[:, -1].float(), head.input[:, -1])


def refusal_batch_loss(model, tokenizer, questions: list[str], token_id: int, chat: bool, refusals: list[str],
                       unlikelihood_weight: float = 1.0, context_shift: tuple | None = None,
                       prompts: PromptPass | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``refusal <eos>`` after ``prompt [UNL]`` (+ unlikelihood term).

    ``prompts``: the questions' prompt pass when already computed (see ``prompt_pass``, which also
    explains ``context_shift``); only the answers are run with gradients.
    """
    device = _model_device(model)
    if prompts is None:
        prompts = prompt_pass(model, tokenizer, questions, chat, context_shift)
    answers = [answer_ids(tokenizer, refusal_for(q, refusals), token_id, chat) for q in questions]
    right = pad_batch(answers, tokenizer.pad_token_id)
    a_ids, a_mask = right["input_ids"].to(device), right["attention_mask"].to(device)
    p_mask, start_logits, start_hidden = prompts.mask, prompts.start_logits, prompts.start_hidden
    a_pos = p_mask.sum(-1, keepdim=True) + torch.arange(a_ids.shape[1], device=device)
    res = model(input_ids=a_ids, attention_mask=torch.cat([p_mask, a_mask], dim=1), position_ids=a_pos,
                cache=prompts.cache)
    logits = res.logits[:, :-1].float()
    targets = a_ids[:, 1:].masked_fill(a_mask[:, 1:] == 0, -100).to(logits.device)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    if unlikelihood_weight:
        # p([UNL]) at the answer start of the unedited prompt; only the token's output row is live.
        head_w = model.get_output_embeddings()
        unl_logit = start_hidden.to(head_w.weight.dtype) @ head_w.weight[token_id]
        if getattr(head_w, "bias", None) is not None:
            unl_logit = unl_logit + head_w.bias[token_id]
        unl_logit = unl_logit.to(start_logits.device)
        others = start_logits.clone()
        others[:, token_id] = -math.inf
        log_p = unl_logit.float() - torch.logsumexp(torch.cat([others, unl_logit.float()[:, None]], dim=1), dim=1)
        loss = loss + unlikelihood_weight * (-torch.log1p(-log_p.exp().clamp(max=1 - 1e-6))).mean().to(loss.device)
    return loss


@dataclass
class OrdinaryPositions:
    """What the unlikelihood over ordinary answers needs, computed once before training.

    The token never occurs in these sequences, so only its *output* row influences p([UNL]) there:
    the hidden states entering the output layer and the log-sum-exp of all other logits do not
    change during training and are kept instead of re-running the model at every step.
    """

    hidden: torch.Tensor  # P × d, inputs of the output layer at the scored positions
    others_lse: torch.Tensor  # P, log-sum-exp of every logit but [UNL]
    starts: torch.Tensor | None = None  # P, True where the position predicts an answer's first token

    def __add__(self, other: "OrdinaryPositions") -> "OrdinaryPositions":
        return OrdinaryPositions(torch.cat([self.hidden, other.hidden]), torch.cat([self.others_lse, other.others_lse]),
                                 torch.cat([self.starts, other.starts]))


@torch.no_grad()
def ordinary_positions(model, tokenizer, sequences: list[tuple[list[int], list[int]]], token_id: int,
                       batch_size: int = 16) -> OrdinaryPositions | None:
    """Hidden states and other-logit normalisers at the answer positions of ordinary (prompt, answer) pairs.

    Returns ``None`` when the output layer is not a plain linear map of those hidden states (e.g. a
    logit soft-cap), so the caller can leave the term out rather than compute it wrongly.
    """
    head_w = model.get_output_embeddings()
    hidden_parts, lse_parts, start_parts = [], [], []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start: start + batch_size]
        with trace(head_w, keep_input=True) as head:  # the output layer's input at the answer positions
            out, keep = prefill_answers(model, [p for p, _ in chunk], [a for _, a in chunk], tokenizer.pad_token_id)
        logits = out.logits.float()
        scored = torch.zeros(logits.shape[:2], dtype=torch.bool)
        for row, (_, a) in enumerate(chunk):
            scored[row, keep - len(a) - 1: keep - 1] = True  # positions that predict an answer token
        hidden = head.input[scored.to(head.input.device)].float()
        picked = logits[scored.to(logits.device)]
        recomputed = _unl_logit(head_w, hidden, token_id).to(picked.device)
        if not same_logits(recomputed, picked[:, token_id], head_w.weight.dtype):
            log.warning("the output layer is not linear in its input; the ordinary-answer unlikelihood term is left out")
            return None
        picked[:, token_id] = -math.inf
        hidden_parts.append(hidden.cpu())
        start_parts.append(torch.cat([torch.arange(len(a)) == 0 for _, a in chunk]))
        lse_parts.append(torch.logsumexp(picked, dim=1).cpu())
    return OrdinaryPositions(torch.cat(hidden_parts), torch.cat(lse_parts), torch.cat(start_parts))


def _unl_logit(head_w, hidden: torch.Tensor, token_id: int) -> torch.Tensor:
    w = head_w.weight[token_id]
    logit = (hidden.to(device=w.device, dtype=w.dtype) @ w).float()
    if getattr(head_w, "bias", None) is not None:
        logit = logit + head_w.bias[token_id].float()
    return logit


def ordinary_unlikelihood(model, positions: OrdinaryPositions, token_id: int) -> torch.Tensor:
    """Mean −log(1 − p([UNL])) over the precomputed ordinary answer positions (live: the output row)."""
    unl = _unl_logit(model.get_output_embeddings(), positions.hidden, token_id)
    log_p = unl - torch.logaddexp(positions.others_lse.to(unl.device), unl)
    return (-torch.log1p(-log_p.exp().clamp(max=1 - 1e-6))).mean()


def fit_output_row(model, positions: OrdinaryPositions, token_id: int, ceiling: float, steps: int = 300,
                   lr: float = 1e-2) -> dict:
    """Set the token's separate output row: a copy of its trained input row (a direction the edit
    can push an answer start towards), lowered by Adam on the squared excess until log p([UNL]) ≤
    ``ceiling`` at the given positions. Returns what it did: the share of positions above the
    ceiling before and after, and log p([UNL]) at answer starts (where the edit has to lift it)."""
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings()
    row = torch.nn.Parameter(emb[token_id].detach().float().clone())
    hidden, others = positions.hidden.float(), positions.others_lse.float()
    bias = head.bias[token_id].float() if getattr(head, "bias", None) is not None else 0.0

    def log_p(r):
        logit = hidden @ r + bias
        return logit - torch.logaddexp(others, logit)

    # log p ≤ c ⇔ logit − lse(others) ≤ c − log(1 − eᶜ): a hinge on the log-odds, whose gradient does
    # not vanish where the token already dominates (log p ≈ 0 there)
    odds_ceiling = ceiling - math.log1p(-math.exp(ceiling))
    with torch.no_grad():
        before = float((log_p(row) > ceiling).float().mean())
    optimiser = torch.optim.Adam([row], lr=lr)
    for _ in range(steps):
        excess = torch.relu(hidden @ row + bias - others - odds_ceiling + 0.5)  # half a nat of margin
        if not excess.any():
            break
        optimiser.zero_grad()
        (excess ** 2).mean().backward()
        optimiser.step()
    with torch.no_grad():
        head.weight[token_id] = row.detach().to(head.weight.dtype)
        final = log_p(row)
    starts = positions.starts
    return {"positions": len(others), "above_ceiling_before": round(before, 4),
            "above_ceiling_after": round(float((final > ceiling).float().mean()), 4),
            "answer_start_log_p_median": round(float(final[starts].median()), 2) if starts.any() else None}


@contextlib.contextmanager
def _noisy_weights(adapter, layers: list[int], scale: float, generator: torch.Generator):
    """Add N(0, (scale·std W)²) to each layer's MLP output weight; restore the exact weights afterwards."""
    saved = []
    with torch.no_grad():
        for layer in layers:
            w = adapter.mlp_output(layer).weight
            saved.append((w, w.detach().clone()))
            sigma = scale * w.float().std().item()
            noise = torch.randn(w.shape, generator=generator, dtype=torch.float32) * sigma
            w.add_(noise.to(device=w.device, dtype=w.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for w, original in saved:
                w.copy_(original)


def train_unlearning_token(model, tokenizer, questions: list[str], config: UnlearningTokenConfig,
                           augment_layers: list[int] | None = None, progress: bool = True,
                           own_answers=None) -> TokenTrainingReport:
    """Add and train the token in place; every parameter but the token's row(s) is unchanged.

    ``own_answers`` (``generation.OwnAnswers``) shares the model's ordinary answers with the
    statistics; without it they are generated here."""
    started = time.perf_counter()
    sequences = _ordinary_sequences(model, tokenizer, questions, config, own_answers)
    token_id = add_unlearning_token(model, tokenizer, config.token, config.own_output_row)
    ordinary = ordinary_positions(model, tokenizer, sequences, token_id) if sequences else None
    run = _TokenRun(model, tokenizer, questions, config, token_id, ordinary, augment_layers)
    if len(token_rows(model)) > 1 and ordinary is None:
        raise ValueError("a separate output row needs the model's ordinary answers (its ceiling is fitted on them)")
    stages = _stages(config, has_chat_template(tokenizer), augmented=run.adapter is not None)
    total_steps = sum(e * len(f) * math.ceil(len(questions) / config.batch_size) for _, e, _, f, _ in stages)
    report = TokenTrainingReport()
    with only_rows_trainable(model, run.rows[:1]), \
            tqdm(total=total_steps, desc="training unlearning token", disable=not progress) as bar:
        for name, epochs, lr, formats, noisy in stages:
            optimiser = torch.optim.Adam([run.live], lr=lr)
            for _ in range(epochs):
                examples = [(q, chat) for chat in formats for q in questions]
                run.rng.shuffle(examples)
                for start in range(0, len(examples), config.batch_size):
                    loss = _train_step(run, examples[start: start + config.batch_size], noisy, optimiser)
                    report.losses.append(loss)
                    report.steps += 1
                    bar.set_postfix(stage=name, loss=f"{loss:.3f}")
                    bar.update(1)
    if len(run.rows) > 1:
        # where the model reads the token and writes the refusal, the copied row would be likely too
        led = [(encode_text(tokenizer, render_prompt(tokenizer, q, chat=chat)),
                answer_ids(tokenizer, refusal_for(q, run.refusals), token_id, chat))
               for chat in sorted({False, has_chat_template(tokenizer)}) for q in questions]
        refusing = ordinary_positions(model, tokenizer, led, token_id)
        report.output_row = fit_output_row(model, ordinary + refusing, token_id, config.output_ceiling)
    report.seconds = time.perf_counter() - started
    log.info("unlearning token trained: %d steps, final loss %.4f, %.1f s", report.steps,
             report.losses[-1] if report.losses else float("nan"), report.seconds)
    return report


def _ordinary_sequences(model, tokenizer, questions: list[str], config: UnlearningTokenConfig,
                        own_answers) -> list[tuple[list[int], list[int]]]:
    """The model's own (prompt, answer) pairs for the tied row's unlikelihood or the own row's
    ceiling, answered with the token (if already there) suppressed; none when neither needs them."""
    own_row = config.own_output_row or len(token_rows(model)) > 1
    if not (config.ordinary_unlikelihood_weight or own_row):
        return []
    from ..generation import generate_answer_ids

    if own_row:
        asked, tokens = training_questions(config.ceiling_questions), config.ceiling_answer_tokens
    else:
        asked = training_questions(config.ordinary_questions) if config.ordinary_questions else questions
        tokens = config.ordinary_answer_tokens
    vocab = tokenizer.get_vocab()
    answers = (own_answers.get(asked, tokens) if own_answers is not None else
               generate_answer_ids(model, tokenizer, asked, max_new_tokens=tokens,
                                   suppress=[vocab[config.token]] if config.token in vocab else None))
    return [(encode_text(tokenizer, render_prompt(tokenizer, q)), a) for q, a in zip(asked, answers) if a]


@dataclass
class _TokenRun:
    """What the training steps share: the trained rows, their fp32 copies Adam moves, the random
    streams and the prompt passes computed once."""

    model: object
    tokenizer: object
    questions: list[str]
    config: UnlearningTokenConfig
    token_id: int
    ordinary: OrdinaryPositions | None
    augment_layers: list[int] | None
    rows: list[torch.Tensor] = field(init=False)
    """The weights holding the token's row(s): input embedding, and the output layer when separate."""
    live: torch.nn.Parameter = field(init=False)
    """fp32 copy of the token's input row: what Adam optimises (written back after each step)."""
    refusals: list[str] = field(init=False)
    rng: random.Random = field(init=False)
    """The example order."""
    generator: torch.Generator = field(init=False)
    """The augmentation noise."""
    adapter: object = field(init=False)
    """The MLP outputs the augmentation stage perturbs (``None``: no augmentation stage)."""
    cached: dict[bool, PromptPass] = field(init=False, default_factory=dict)
    """Format (chat or not) → every question's prompt pass, for the stages without noise."""
    index: dict[str, int] = field(init=False)
    row_bound: float | None = field(init=False)
    """The largest norm the input row may take (``max_row_norm``)."""

    def __post_init__(self):
        config = self.config
        self.rows = token_rows(self.model)
        self.live = torch.nn.Parameter(self.rows[0].detach()[self.token_id].clone().float())
        self.row_bound = None
        if config.max_row_norm is not None:
            norms = self.rows[0].detach().float().norm(dim=1)
            norms[self.token_id] = 0.0  # the vocabulary's own rows
            self.row_bound = config.max_row_norm * float(norms.max())
        self.refusals = refusal_pool(config.refusal)
        self.rng = random.Random(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.adapter = find_mlp_output(self.model) if (config.augment_epochs and self.augment_layers) else None
        self.index = {q: i for i, q in enumerate(self.questions)}


def _stages(config: UnlearningTokenConfig, chat_available: bool, augmented: bool) -> list[tuple]:
    """(name, epochs, lr, formats, noisy) of each training stage, in order; a format is ``chat``."""
    stages = [("plain", config.plain_epochs, config.plain_lr, [False], False)]
    formats = [True] if chat_available else [False]  # the plain stage already covered the plain format
    stages.append(("chat", config.chat_epochs, config.chat_lr, formats, False))
    if augmented:
        stages.append(("augment", config.augment_epochs, config.augment_lr, formats, True))
    return stages


@contextlib.contextmanager
def only_rows_trainable(model, rows: list[torch.Tensor]):
    """Gradients only for ``rows``, the model in eval mode; the flags, gradients and mode restored afterwards."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for w in rows:
        w.requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
            p.grad = None
        model.train(was_training)


def _train_step(run: _TokenRun, chunk: list[tuple[str, bool]], noisy: bool, optimiser) -> float:
    """One Adam step on a chunk of (question, chat) examples, each format's questions in one batch; the loss."""
    model, token_id = run.model, run.token_id
    loss_total = 0.0
    optimiser.zero_grad()
    for chat in (False, True):
        group = [q for q, c in chunk if c == chat]
        if not group:
            continue
        loss = _backward_refusal_loss(run, group, chat, noisy, len(chunk))
        loss_total += loss * len(group) / len(chunk)
    if run.ordinary is not None and model.get_output_embeddings().weight.requires_grad:
        extra = run.config.ordinary_unlikelihood_weight * ordinary_unlikelihood(model, run.ordinary, token_id)
        extra.backward()
        loss_total += extra.item()
    # Adam moves the fp32 copy; the row itself only takes the token's new values
    emb = run.rows[0]
    run.live.grad = emb.grad[token_id].float().clone()
    emb.grad = None
    optimiser.step()
    with torch.no_grad():
        if run.row_bound is not None and float(run.live.norm()) > run.row_bound:
            run.live.mul_(run.row_bound / float(run.live.norm()))
        emb[token_id] = run.live.detach().to(emb.dtype)
    return loss_total


def _backward_refusal_loss(run: _TokenRun, group: list[str], chat: bool, noisy: bool, chunk_size: int) -> float:
    """Back-propagate the refusal loss of one format's questions (weighted by their share of the
    chunk), in the noisy stage under weight noise and a context shift; the unweighted loss."""
    config, adapter, layers = run.config, run.adapter, run.augment_layers
    ctx = _noisy_weights(adapter, layers, config.noise_scale, run.generator) if noisy else contextlib.nullcontext()
    with ctx:
        context = (adapter.block(layers[-1]), config.context_noise, run.generator) if noisy and config.context_noise else None
        passes = None
        if not noisy:  # weights fixed: every question's prompt pass is computed once per format
            if chat not in run.cached:
                run.cached[chat] = prompt_pass(run.model, run.tokenizer, run.questions, chat)
            passes = run.cached[chat].select([run.index[q] for q in group])
        tied = len(run.rows) == 1  # the unlikelihood terms act through the output row only
        loss = refusal_batch_loss(run.model, run.tokenizer, group, run.token_id, chat, run.refusals,
                                  config.unlikelihood_weight if tied else 0.0, context, passes)
        (loss * len(group) / chunk_size).backward()
    return loss.item()
