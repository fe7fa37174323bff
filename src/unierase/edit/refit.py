"""After the edit: refit the token's input row on the edited model, so what follows ``[UNL]`` is the refusal.

Where the token has an output row of its own, its input row is read only once ``[UNL]`` has been
emitted: it shapes the answer after the token and nothing before it. The edit changes the states
of the erased questions (and, partly, of questions reworded around them) that the answer after
``[UNL]`` attends to, so a row trained on the unedited model can derail there ("[UNL]who
said…"). Refitting that one row on the edited model, over the round's questions (optionally in the
edit's own context frames) and some generic questions, touches no other answer. The passes refit it where
they find requests undone (``editor._recheck``), on those and a few that hold, and keep it unless it
loses more of them.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass

import torch

from ..prompts import has_chat_template, pad_batch
from ..refusals import refusal_pool
from ..storage import UniEraseError
from ..token.questions import training_questions
from ..token.training import only_rows_trainable, prompt_pass, refusal_batch_loss, token_rows
from .prompts import CONTEXT_PREFIXES, CONTEXT_SUFFIXES

log = logging.getLogger(__name__)


@dataclass
class RefitConfig:
    """The refit of the token's input row on the edited model (``refit_input_row``), run where the
    passes check the requests reached (``editor.run_edit_passes``)."""

    epochs: int = 1
    """Passes over the examples, one step per batch (0 = off: the row stays as trained)."""
    step: float = 0.01
    """How far each step moves the row along its loss's gradient, as a fraction of the row's norm
    (not Adam: its first steps move every coordinate by the learning rate, however little it
    matters; docs/experiments.md)."""
    batch_size: int = 16
    """Examples per step (and prompts per batch of the re-check's prefill)."""
    frames: int = 0
    """Context frames per request question besides the plain one: the edit's own prefixes and
    suffixes (``edit.prompts.CONTEXT_PREFIXES`` / ``CONTEXT_SUFFIXES``, alternating), none of them
    one of the audit's rewordings. They stand for a reworded question the edit only partly reaches."""
    anchors: int = 16
    """Questions of the round whose answers still hold, fitted beside the undone ones (spread over
    the round) so the row keeps leading them into the refusal; the check after the refit covers all."""
    at_end: bool = True
    """Where the round's last check finds nothing to mend, refit on all the round's questions anyway:
    the row then fits the edited states that reworded questions share (docs/experiments.md)."""
    generic_questions: int = 8
    """Questions of the token's generic pool in the fit, so the row still leads into the refusal after
    questions outside this round (an earlier or later round's)."""
    seed: int = 0
    """Seed of the example order."""

    def __post_init__(self):
        problems = [f"{name} must be {rule} (got {getattr(self, name)!r})" for name, rule, ok in (
            ("epochs", "≥ 0", self.epochs >= 0), ("step", "> 0", self.step > 0), ("batch_size", "at least 1", self.batch_size >= 1),
            ("frames", "≥ 0", self.frames >= 0), ("anchors", "≥ 0", self.anchors >= 0),
            ("generic_questions", "≥ 0", self.generic_questions >= 0)) if not ok]
        if problems:
            raise UniEraseError("RefitConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


def refit_frames(question: str, count: int) -> list[str]:
    """``question`` plain and in the first ``count`` of the edit's context frames, prefixes and
    suffixes alternating."""
    prefixed = [p + question for p in CONTEXT_PREFIXES]
    suffixed = [question + s for s in CONTEXT_SUFFIXES]
    framed = [f for pair in zip(prefixed, suffixed) for f in pair] + prefixed[len(suffixed):]
    return [question] + framed[:count]


def can_refit(model, config: RefitConfig) -> bool:
    """Whether the row can be refitted: the refit is on, and the token's output row is its own (a
    tied row would also decide whether ``[UNL]`` is emitted at all)."""
    return config.epochs > 0 and len(token_rows(model)) > 1


@dataclass
class Prefilled:
    """Questions' prompts run once on the model, in batches (``prompt_pass``): what a check of the
    answers after ``[UNL]`` and a refit of its row share (neither changes anything before the token)."""

    questions: list[str]
    batches: list[list[int]]
    """Indices into ``questions``, one list per batch."""
    passes: list
    """One ``PromptPass`` per batch."""

    def select(self, indices: list[int]) -> "Prefilled":
        """The questions ``indices`` only, each batch keeping its own rows (nothing runs again)."""
        wanted = set(indices)
        questions, batches, passes = [], [], []
        for batch, prompts in zip(self.batches, self.passes):
            rows = [j for j, i in enumerate(batch) if i in wanted]
            if rows:
                batches.append(list(range(len(questions), len(questions) + len(rows))))
                questions += [self.questions[batch[j]] for j in rows]
                passes.append(prompts if len(rows) == len(batch) else prompts.select(rows))
        return Prefilled(questions, batches, passes)


def refit_examples(undone: list[int], holding: list[int], anchors: int) -> list[int]:
    """What a refit fits: every undone question and ``anchors`` of the ``holding`` ones, evenly spread."""
    n = min(anchors, len(holding))
    picked = {holding[round(k * (len(holding) - 1) / max(1, n - 1))] for k in range(n)} if n else set()
    return sorted(set(undone) | picked)


def prefill_questions(model, tokenizer, questions: list[str], batch_size: int) -> Prefilled:
    chat = has_chat_template(tokenizer)
    batches = [list(range(s, min(s + batch_size, len(questions)))) for s in range(0, len(questions), batch_size)]
    return Prefilled(questions, batches, [prompt_pass(model, tokenizer, [questions[i] for i in b], chat) for b in batches])


def starts_with(prefilled: Prefilled, token_id: int) -> list[bool]:
    """Per question: whether the greedy answer starts with ``token_id`` (only then can a refit of the
    token's input row, read after it, change what follows)."""
    starts = [False] * len(prefilled.questions)
    for batch, prompts in zip(prefilled.batches, prefilled.passes):
        for i, first in zip(batch, (prompts.start_logits.argmax(-1) == token_id).tolist()):
            starts[i] = first
    return starts


@torch.no_grad()
def answers_hold(model, tokenizer, prefilled: Prefilled, token_id: int, tails: list[list[int] | None]) -> list[bool]:
    """Per question: whether the greedy answer starts with ``token_id`` and, where ``tails[i]`` is
    given, goes on with exactly those tokens (each the greedy next one, teacher forced)."""
    starts = starts_with(prefilled, token_id)
    holds = [s and not tails[i] for i, s in enumerate(starts)]
    for batch, prompts in zip(prefilled.batches, prefilled.passes):
        forced = [j for j, i in enumerate(batch) if starts[i] and tails[i]]
        if not forced:
            continue
        device = prompts.mask.device
        ids = pad_batch([[token_id] + tails[batch[j]] for j in forced], tokenizer.pad_token_id)
        a_ids, a_mask = ids["input_ids"].to(device), ids["attention_mask"].to(device)
        sub = prompts.select(forced)
        positions = sub.mask.sum(-1, keepdim=True) + torch.arange(a_ids.shape[1], device=device)
        logits = model(input_ids=a_ids, attention_mask=torch.cat([sub.mask, a_mask], dim=1), position_ids=positions,
                       cache=sub.cache).logits
        chosen = logits[:, :-1].argmax(-1).to(device)
        ok = ((chosen == a_ids[:, 1:]) | (a_mask[:, 1:] == 0)).all(-1).tolist()
        for j, good in zip(forced, ok):
            holds[batch[j]] = good
    return holds


def refit_input_row(model, tokenizer, token_id: int, prefilled: Prefilled, refusal: str | None,
                    config: RefitConfig) -> dict | None:
    """Refit the token's input row in place on the edited ``model``: the round's questions
    (``prefilled``), framed copies of them (``config.frames``) and generic questions.

    Returns what it did (the mean refusal loss of the first and of the last epoch; steps; seconds),
    or ``None`` where ``can_refit`` says there is nothing to do."""
    if not can_refit(model, config):
        return None
    started = time.perf_counter()
    chat = has_chat_template(tokenizer)
    extra = [f for q in prefilled.questions for f in refit_frames(q, config.frames)[1:]]
    extra += training_questions(config.generic_questions) if config.generic_questions else []
    batches = [[prefilled.questions[i] for i in b] for b in prefilled.batches]
    passes = list(prefilled.passes)
    if extra:
        more = prefill_questions(model, tokenizer, extra, config.batch_size)
        batches += [[extra[i] for i in b] for b in more.batches]
        passes += more.passes
    order = list(range(len(batches)))
    random.Random(config.seed).shuffle(order)
    total = sum(len(b) for b in batches)
    refusals = refusal_pool(refusal)
    emb = token_rows(model)[0]
    length = config.step * float(emb.detach()[token_id].float().norm())
    losses: list[float] = []
    with only_rows_trainable(model, [emb]):
        for _ in range(config.epochs):
            losses.append(0.0)
            for k in order:
                batch, prompts = batches[k], passes[k]
                with torch.enable_grad():  # a copy of the batch's cache: the answers extend it
                    loss = refusal_batch_loss(model, tokenizer, batch, token_id, chat, refusals, unlikelihood_weight=0.0,
                                              prompts=prompts.select(list(range(len(batch)))))
                    loss.backward()
                losses[-1] += loss.item() * len(batch) / total
                grad = emb.grad[token_id].float()
                emb.grad = None
                with torch.no_grad():
                    emb[token_id] = (emb[token_id].float() - length * grad / grad.norm().clamp(min=1e-12)).to(emb.dtype)
    report = {"examples": total, "steps": config.epochs * len(batches), "loss_first_epoch": round(losses[0], 4),
              "loss_last_epoch": round(losses[-1], 4), "seconds": round(time.perf_counter() - started, 3)}
    log.info("token input row refitted on the edited model: refusal loss %.4f → %.4f over %d examples, %.1f s",
             report["loss_first_epoch"], report["loss_last_epoch"], total, report["seconds"])
    return report
