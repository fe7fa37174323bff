"""Target values: the residual-stream change at the last edited layer that makes ``[UNL]`` next.

For each request a vector δ is added to block L*'s output at the key token of every prompt
variant and optimised so the model predicts the target token after the prompt; z = h₀ + δ is the
value the closed-form update then writes into the MLP output projections.

Optionally the whole answer the token leads into (``[UNL] refusal <eos>``) is the target:
the first token with full weight, the continuation with ``continuation_weight``. A δ that only
maximises p([UNL]) also pushes the tokens after it towards ``[UNL]``/end-of-turn (the refusal
then degenerates); scoring the continuation keeps δ compatible with the refusal.

Steps may leave the question's words after the key token stale, recomputed every few steps
(``ValueConfig.context_refresh``, ``stale_context``): cheaper steps, δ's gradient on the direct path.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from typing import Callable
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from ..models.adapters import MLPOutputAdapter
from ..models.precision import same_logits
from ..models.tracing import edit_output, frozen_parameters, head_at, replay_blocks, stop_after, trace
from ..generation import prefill, select_cache_rows
from ..prompts import pad_batch
from .prompts import EditPrompt
from .stale_context import StaleContext

log = logging.getLogger(__name__)

KEY, LAST, TAIL = 0, 1, slice(2, None)
"""Columns of a ``PromptGroup``'s logits: the key token, the last prompt token, the scored continuation."""


@dataclass
class ValueConfig:
    """Optimisation of the target values; the official Llama-3.1-8B values are the defaults where
    the method has one (a model's recipe holds what was measured on it)."""

    steps: int = 10
    """Maximum Adam steps."""
    lr: float = 0.1
    """Adam learning rate on δ, in ``lr_unit``s (a small model converges in fewer steps at a higher rate)."""
    lr_unit: str = "state"
    """'state': each Adam step moves δ by about ``lr`` × the RMS of the hidden state at the key token
    per coordinate, so the same settings move δ alike on models whose residual streams differ in
    scale; 'absolute': in the state's own units, as the official method."""
    kl_weight: float = 0.0625
    """Weight of the KL term that keeps the key token's own next-token distribution."""
    weight_decay: float = 0.5
    """Weight of ‖δ‖ / ‖h₀‖²."""
    clamp_factor: float = 0.75
    """δ is projected onto the ball ‖δ‖ ≤ c‖h₀‖ after each step (smaller: less collateral, more passes)."""
    stop_loss: float = 0.05
    """A request's δ stops (and leaves the batch) once its mean −log p(target) is below this (and
    the continuation's, when scored, below ``continuation_stop``)."""
    continuation_weight: float = 0.5
    """Weight of the mean −log p of the refusal continuation after the target token (0 = score only
    the first token, as the official method)."""
    continuation_tokens: int | None = None
    """Score only the first this many continuation tokens (``None`` = the whole refusal and the end of
    turn: with ``greedy_continuation`` the refusal then comes out whole and ends; fewer are cheaper)."""
    continuation_stop: float = 0.6
    """Per-token mean −log p of the continuation under which a request counts as converged."""
    continuation_margin_weight: float = 1.0
    """Weight of a hinge on each scored continuation token's lead in log p over its strongest rival:
    the mean −log p hardly moves one token that is second best, and ``greedy_continuation`` waits
    for exactly that token (0 = off)."""
    continuation_margin: float = 0.5
    """The lead (in log p) under which the hinge acts."""
    banned_weight: float = 0.0
    """Weight of −log p(the refusal's first token) at the last prompt position with the target token
    masked out, so that decoding with the token banned starts the refusal, not the fact (0 = off)."""
    banned_stop: float = 0.7
    """With ``banned_weight``: that −log p under which a request counts as converged."""
    context_refresh: int = 1
    """> 1: after a first exact step, steps run only the key token, the prompt's end and the scored
    continuation, the question's words after the key token recomputed at the current δ every this
    many steps (``stale_context``); 1 = every step exact."""
    micro_batch: int | None = None
    """Requests whose prompts run forward and backward together; each step accumulates the gradient
    over such micro-batches, so memory is that of one (a 400-request round fits where 40 do) at the
    same δ up to rounding. ``None`` = all at once."""
    greedy_continuation: bool = True
    """A request also converges only once its scored continuation is its greedy one, and after an
    edit pass it counts as reached only once the edited model continues that way (else it gets
    another pass, optimised on the edited model): the refusal comes out whole, not cut."""

    def __post_init__(self):
        from ..storage import UniEraseError

        problems = [f"{name} must be {rule} (got {getattr(self, name)!r})" for name, rule, ok in (
            ("steps", "at least 1", self.steps >= 1),
            ("context_refresh", "at least 1", self.context_refresh >= 1),
            ("lr", "positive", self.lr > 0),
            ("lr_unit", "'state' or 'absolute'", self.lr_unit in ("state", "absolute")),
            ("clamp_factor", "positive", self.clamp_factor > 0),
            ("kl_weight", "≥ 0", self.kl_weight >= 0),
            ("weight_decay", "≥ 0", self.weight_decay >= 0),
            ("stop_loss", "≥ 0 (0: never stop early)", self.stop_loss >= 0),
            ("continuation_weight", "≥ 0", self.continuation_weight >= 0),
            ("continuation_margin_weight", "≥ 0", self.continuation_margin_weight >= 0),
            ("continuation_margin", "≥ 0", self.continuation_margin >= 0),
            ("banned_weight", "≥ 0", self.banned_weight >= 0),
            ("continuation_tokens", "None or ≥ 0", self.continuation_tokens is None or self.continuation_tokens >= 0),
            ("micro_batch", "None or at least 1", self.micro_batch is None or self.micro_batch >= 1),
        ) if not ok]
        if problems:
            raise UniEraseError("ValueConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ValueReport:
    steps: int
    initial_nll: list[float | None]
    """−log p(target) per request before this call's first step (``None``: a kept target or a request
    not optimised, not evaluated)."""
    final_nll: list[float | None]
    final_continuation_nll: list[float | None]
    delta_norm_ratio: list[float]
    steps_per_request: list[int]
    """Steps each request's δ was optimised (it leaves the batch once its target is reached)."""
    converged: list[bool]
    """Whether each request's target is reached (stop criteria met, or kept from an earlier pass)."""


def _suffix_batch(prompts: list[EditPrompt], pad_id: int, device, tails: list[list[int]] | None = None):
    """Suffixes (key token onwards + the prompt's teacher-forced tail), right-padded, with their mask;
    ``last`` = each suffix's last prompt token."""
    suffixes = [p.input_ids[p.key_index:] + (tails[i] if tails else []) for i, p in enumerate(prompts)]
    last = torch.tensor([len(p.input_ids) - p.key_index - 1 for p in prompts])
    enc = pad_batch(suffixes, pad_id)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device), last.to(device)


def _row_inputs(chosen: list[EditPrompt], tails: list[list[int]] | None) -> list[tuple]:
    """What each row of a group runs (prompt, key index, teacher-forced tail)."""
    return [(tuple(p.input_ids), p.key_index, tuple(tails[row]) if tails and len(tails[row]) > 1 else ())
            for row, p in enumerate(chosen)]


class PromptGroup:
    """Prompt variants run together: the key token onwards on top of their cached prefix.

    Only the positions whose logits are needed go through the output layer, each row its own: the
    key token (the KL term), the last prompt token and the teacher-forced tail when there is one —
    the columns ``KEY``, ``LAST`` and ``TAIL`` of what ``logits`` returns.
    """

    def __init__(self, model, members: list[int], prompts: list[EditPrompt], pad_id: int, device, tails=None,
                 adapter: MLPOutputAdapter | None = None, z_layer: int | None = None, *, base_logits: bool = True,
                 replay: bool | None = None):
        self.model, self.device = model, device
        self.adapter, self.z_layer = adapter, z_layer
        self.members = torch.tensor(members, device=device)
        chosen = [prompts[i] for i in members]
        self.inputs = _row_inputs(chosen, tails)
        """What each row ran (prompt, key index, teacher-forced tail): a group is reused only for the same."""
        self.suf, suf_mask, self.last = _suffix_batch(chosen, pad_id, device, tails)
        with torch.no_grad():  # the tokens before the key (their shared template part once)
            out, pre_mask, _ = prefill(model, [p.input_ids[: p.key_index] for p in chosen], pad_id)
        self.cache = out.cache
        self.mask = torch.cat([pre_mask, suf_mask], dim=1)
        self.pos = pre_mask.sum(-1, keepdim=True) + torch.arange(self.suf.shape[1], device=device)
        # the logits a step reads, per row: the key token (the KL term), the last prompt token, and the
        # teacher-forced tail when there is one (position last+j predicts tails[row][j]; j = 0 is the
        # target token itself); padded tail columns repeat the last prompt token with weight 0
        width = max(len(t) for t in tails) - 1 if tails else 0
        positions = torch.cat([torch.zeros(len(chosen), 1, dtype=torch.long), self.last.cpu()[:, None].repeat(1, 1 + width)], 1)
        self.tail = None
        if tails:
            self.tail = (torch.zeros(len(chosen), width, dtype=torch.long), torch.zeros(len(chosen), width))
            for row, t in enumerate(tails):
                n = len(t) - 1
                if n == 0:  # the target token alone: no continuation scored on this row
                    continue
                positions[row, 2: 2 + n] = self.last[row].item() + 1 + torch.arange(n)
                self.tail[0][row, :n] = torch.tensor(t[1:])
                self.tail[1][row, :n] = 1.0 / n
            self.tail = tuple(t.to(device) for t in self.tail)
        self.positions = positions.to(device)
        """Suffix position of each logits column a step returns: ``KEY``, ``LAST``, then the tail."""
        self.middle = [max(0, p.question_span[1] - p.key_index - 1) for p in chosen]
        """Per row: the question's words after the key token (``stale_context``)."""
        self.replay, self.block_out, self.base_logits, self.stale = False, None, None, None
        self.stale_failed = False  # the cheap step did not reproduce the exact one: not tried again
        if adapter is not None:
            self._record_block_output(base_logits, replay)

    def use_stale_context(self) -> bool:
        """Set up cheaper steps with the question's words stale (``stale_context``); False where it
        cannot serve (no words after the key token, or block outputs not replayed)."""
        if (self.stale is None and not self.stale_failed and self.replay and self.block_out is not None
                and max(self.middle, default=0) > 0):
            self.stale = StaleContext(self, self.middle)
        return self.stale is not None

    @torch.no_grad()
    def _record_block_output(self, base_logits: bool, replay: bool | None) -> None:
        """One pass without δ: block ``z_layer``'s output on the suffix and (``base_logits``) the
        logits before any δ.

        Blocks up to ``z_layer`` do not depend on δ, so later passes replay that output instead of
        recomputing them (``replay_blocks``). Whether replaying reproduces the model does not depend
        on the rows: ``replay`` passes on what another group found; ``None`` checks it here against
        the full pass on the first row, with a fallback to full passes for a model where it fails."""
        block = self.adapter.block(self.z_layer)
        with trace(block, keep_output=True) as rec:
            if base_logits or replay is None:
                self.base_logits = self.logits()
            else:
                with stop_after(block):  # only the block output is needed
                    self.logits()
        self.block_out, self.tuple_output = rec.output, rec.tuple_output
        self.replay = bool(replay)
        if replay is None:
            self.replay = True
            try:
                replayed = self.subset([0]).logits(lambda h: h)
                self.replay = same_logits(replayed, self.base_logits[:1])
            except Exception as error:  # a model whose forward needs more from its blocks than their output
                log.debug("replaying block outputs failed: %s", error)
                self.replay = False
            if not self.replay:
                log.warning("replaying block %d's output did not reproduce the model's logits; running full passes",
                            self.z_layer)
            if not base_logits:
                self.base_logits = None

    def subset(self, rows: list[int]) -> "PromptGroup":
        """The same group restricted to ``rows`` (indices into ``members``): the cached prefix is
        row-selected, not recomputed, when requests leave the optimisation."""
        idx = torch.tensor(rows, device=self.device)
        sub = copy.copy(self)
        sub.members, sub.suf, sub.last, sub.mask, sub.pos, sub.positions = (
            t[idx] for t in (self.members, self.suf, self.last, self.mask, self.pos, self.positions))
        sub.cache = copy.deepcopy(self.cache)
        select_cache_rows(sub.cache, idx)
        if self.tail is not None:
            sub.tail = tuple(t[idx] for t in self.tail)
        if self.block_out is not None:
            sub.block_out = self.block_out[idx]
        if self.base_logits is not None:
            sub.base_logits = self.base_logits[idx]
        if self.stale is not None:
            sub.stale = self.stale.subset(idx)
        sub.inputs = [self.inputs[r] for r in rows]
        sub.middle = [self.middle[r] for r in rows]
        return sub

    def first_tokens(self) -> list[int]:
        """Each row's greedy next token after its prompt, without δ."""
        return self.base_logits[:, LAST].argmax(-1).tolist()

    def values(self) -> torch.Tensor:
        """Block ``z_layer``'s output at each row's key token, without δ (d × rows, fp32, CPU)."""
        return self.block_out[:, 0].float().cpu().T

    def logits(self, edit: Callable[[torch.Tensor], torch.Tensor] | None = None, *, stale: bool = False) -> torch.Tensor:
        """Logits (rows × ``KEY``, ``LAST``, ``TAIL`` × vocabulary), with block ``z_layer``'s output
        passed through ``edit``. With stale context set up (``use_stale_context``): ``stale`` runs the cheap step, else this
        exact step refreshes the words' states it uses."""
        if self.stale is not None and stale and self.stale.context is not None and edit is not None:
            return self.stale.logits(self, edit)
        cache = copy.deepcopy(self.cache)  # each step extends its own copy of the shared prefix
        prefix_len = cache.get_seq_length()
        if edit is None:
            context = contextlib.nullcontext()
        elif self.replay:
            context = replay_blocks(self.adapter.blocks, self.z_layer, lambda: edit(self.block_out),
                                    tuple_output=self.tuple_output)
        else:
            context = edit_output(self.adapter.block(self.z_layer), edit)
        with context, head_at(self.model.get_output_embeddings(), self.positions):
            logits = self.model(input_ids=self.suf, attention_mask=self.mask, position_ids=self.pos, cache=cache,
                                use_cache=True, logits_to_keep=0).logits.to(self.device)
        if self.stale is not None and edit is not None:
            self.stale.refresh(self, cache, prefix_len)
            if not self.stale.verified:
                self._verify_stale_context(edit, logits.detach())
        return logits

    def _verify_stale_context(self, edit, exact: torch.Tensor) -> None:
        """Right after a refresh the cheap step must give the exact step's logits; on a model where it
        does not (a cache or mask it does not know), the steps stay exact."""
        try:
            with torch.no_grad():
                ok = same_logits(self.stale.logits(self, edit), exact)
        except Exception as error:
            log.debug("stale context failed: %s", error)
            ok = False
        if ok:
            self.stale.verified = True
        else:
            log.warning("steps with the question's words stale did not reproduce the model's logits; running exact steps")
            self.stale, self.stale_failed = None, True

    def target_nll(self, logits: torch.Tensor, target_id: int) -> torch.Tensor:
        return -torch.log_softmax(logits[:, LAST].float(), dim=-1)[:, target_id]

    def banned_nll(self, logits: torch.Tensor, target_id: int) -> torch.Tensor:
        """−log p(each row's first continuation token) at its last prompt position, the target token
        masked out: what a decode with the target banned would start with (needs a tail)."""
        last = logits[:, LAST].float()
        masked = last.index_fill(-1, torch.tensor([target_id], device=last.device), float("-inf"))
        return -torch.log_softmax(masked, dim=-1).gather(-1, self.tail[0][:, :1])[:, 0]

    def tail_greedy(self, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Per row: whether every scored continuation token is the greedy next token (teacher forced;
        ``logits`` default: the ones without δ). Rows without a tail count as greedy."""
        logits = self.base_logits if logits is None else logits
        if self.tail is None:
            return torch.ones(len(self.members), dtype=torch.bool, device=self.device)
        ids, weight = self.tail
        chosen = logits[:, TAIL].argmax(-1)
        return ((chosen == ids) | (weight == 0)).all(-1)

    def tail_nll(self, logits: torch.Tensor) -> torch.Tensor:
        ids, weight = self.tail
        logp = torch.log_softmax(logits[:, TAIL].float(), dim=-1)
        return -(logp.gather(-1, ids[..., None])[..., 0] * weight).sum(-1)

    def tail_shortfall(self, logits: torch.Tensor, margin: float) -> torch.Tensor:
        """Per row: Σ over its scored continuation tokens of max(0, margin − (logit of the token − the
        largest other logit)); zero once every token leads its rivals by ``margin``."""
        ids, weight = self.tail
        tail = logits[:, TAIL].float()
        chosen = tail.gather(-1, ids[..., None])[..., 0]
        rival = tail.scatter(-1, ids[..., None], float("-inf")).amax(-1)
        return (torch.relu(margin - (chosen - rival)) * (weight > 0)).sum(-1)


def _restrict(groups: list[PromptGroup], prompts: list[EditPrompt], requests: set[int]) -> list[PromptGroup]:
    """The groups restricted to the rows of ``requests`` (empty groups dropped)."""
    return [g.subset(rows) for g in groups
            if (rows := [i for i, m in enumerate(g.members.tolist()) if prompts[m].request_index in requests])]


def scored_continuation(continuation: list[int] | None, config: ValueConfig) -> list[int]:
    """The tokens after the target token that ``config`` scores: none, its first
    ``continuation_tokens``, or all of ``continuation``."""
    if not continuation or config.continuation_weight <= 0 or config.continuation_tokens == 0:
        return []
    return list(continuation)[:config.continuation_tokens]


def _tails(prompts: list[EditPrompt], plain: list[int], target_id: int, config: ValueConfig | list[ValueConfig],
           continuations: list[list[int]] | None) -> list[list[int]] | None:
    """The teacher-forced target of each plain prompt (target token + scored continuation), or
    ``None`` when only the first token is scored. ``config``: one for all, or one per request."""
    per_request = config if isinstance(config, list) else None
    tails = [scored_continuation(continuations[prompts[i].request_index] if continuations else None,
                                 per_request[prompts[i].request_index] if per_request else config) for i in plain]
    if not any(tails):
        return None
    return [[target_id] + t for t in tails]


def plain_prompt_group(model, adapter: MLPOutputAdapter, z_layer: int, prompts: list[EditPrompt], target_id: int,
                       pad_id: int, config: ValueConfig | list[ValueConfig],
                       continuations: list[list[int]] | None = None) -> PromptGroup:
    """The plain prompts as the value optimisation runs them, after one pass without δ.

    After an edit pass it answers whether each request's greedy first token is the target yet
    (``first_tokens``) and where its value stands (``values``); the next pass's value optimisation
    then starts from it (``compute_target_values(plain_group=…)``) instead of running them again.
    ``config`` (one per request where requests use different value settings) says which
    continuation each row scores, as that optimisation will.
    """
    device = model.get_input_embeddings().weight.device
    plain = [i for i, p in enumerate(prompts) if p.variant == 0]
    return PromptGroup(model, plain, prompts, pad_id, device, _tails(prompts, plain, target_id, config, continuations),
                       adapter, z_layer)

def compute_target_values(model, adapter: MLPOutputAdapter, z_layer: int, prompts: list[EditPrompt], num_requests: int,
                          target_id: int, pad_id: int, config: ValueConfig, progress: bool = True,
                          continuations: list[list[int]] | None = None,
                          start_targets: list[torch.Tensor | None] | None = None,
                          plain_group: PromptGroup | None = None,
                          keep_targets: list[bool] | None = None,
                          groups: list[int] | None = None,
                          optimise: list[bool] | None = None,
                          minibatch: int | None = None) -> tuple[torch.Tensor, torch.Tensor, ValueReport]:
    """Return (Z, H₀, report): targets and current values at block ``z_layer``'s output, both d × N.

    ``continuations[r]`` = token ids that should follow the target token for request r, scored on
    the plain prompt when ``config.continuation_weight`` > 0. ``start_targets[r]`` (d, or ``None``)
    warm-starts request r's δ at that target (within the bound): a later edit pass starts from the
    target its previous pass reached, and a request that still reaches it leaves after one step.
    Tokens before the key token do not depend on δ, so their key/value cache is computed once and
    each step only runs the key token onwards. ``plain_group`` (from ``plain_prompt_group`` on the
    current model, rows in request order) is used for the plain prompts when it ran the same.
    ``keep_targets[r]``: request r's start target converged in an earlier pass and is kept as it is
    (within the bound) without being evaluated again; its prompts take no part in the optimisation.
    ``groups[r]``: the δ request r shares (an entity-scope group: one target for all its questions,
    z_r = h₀_r + δ_g); a group leaves the optimisation once all its requests reach the target, and
    is kept only when all of them are. ``None`` = one δ per request. ``optimise[r]`` False: request
    r takes no part in the optimisation of its group's δ (it must share it with one that does) and
    only receives z_r = h₀_r + δ_g: a large group's δ is optimised on a few of its questions.
    ``minibatch``: each step runs at most this many optimised questions of each group, taken in turn
    (a group's δ then fits all of its questions' contexts at the cost of a few per step); a group
    leaves once each of its questions met the target when it was last run.
    """
    started = time.perf_counter()
    device = model.get_input_embeddings().weight.device
    scored = bool(continuations) and config.continuation_weight > 0 and config.continuation_tokens != 0
    layout = _request_layout(prompts, num_requests, start_targets, keep_targets, groups, optimise)
    tails = _tails(prompts, layout.plain, target_id, config, continuations)
    req = torch.tensor([p.request_index for p in prompts], device=device)
    prompt_groups, others = _prompt_groups(model, adapter, z_layer, prompts, pad_id, tails, layout, plain_group)
    reference = _reference(prompt_groups[0], others, req, layout)
    for g in prompt_groups:  # the KL reference is taken: the logits without δ are not kept
        g.base_logits = None
    if (layout.kept or layout.riders) and others is None:  # their plain rows leave too (the prefixed group never had them)
        prompt_groups = _restrict(prompt_groups, prompts, layout.active)
    delta = _start_delta(reference, layout, start_targets, config)
    log.debug("target values: %d requests (%d optimised, %d groups), set up in %.2f s", num_requests,
              len(layout.active), layout.num_groups, time.perf_counter() - started)
    steps = _ValueSteps(config, target_id, prompts, layout, reference, delta, req, scored=scored, minibatch=minibatch)
    bar = tqdm(total=config.steps, desc="target values", disable=not progress or not layout.active)
    with frozen_parameters(model):  # only δ is optimised: no weight gradient is needed
        last_step = steps.run(prompt_groups, bar)
    bar.close()
    log.debug("target values: %d steps, %.2f s in all", last_step + 1, time.perf_counter() - started)
    report = steps.report(last_step)
    return steps.targets(), reference.h0.T.cpu(), report


@dataclass
class _RequestLayout:
    """Which δ each request shares, and which requests take part in optimising it."""

    num_requests: int
    group_of: list[int]
    """Request → the index of its δ."""
    members: dict[int, list[int]]
    """δ → the requests sharing it."""
    kept: set[int]
    """Requests whose start target is kept as it is (their whole group converged in an earlier pass)."""
    riders: set[int]
    """Requests that only receive their group's δ (``optimise`` False)."""
    steering: dict[int, list[int]]
    """δ → the requests it is optimised on."""
    plain: list[int]
    """Prompt indices of the plain variants (every request's)."""
    prefixed: list[int]
    """Prompt indices of the prefixed variants of the optimised requests."""
    active: set[int]
    """Requests still optimised (they leave once their group reached its target)."""

    @property
    def num_groups(self) -> int:
        return max(self.group_of) + 1 if self.group_of else 0


def _request_layout(prompts: list[EditPrompt], num_requests: int, start_targets, keep_targets, groups,
                    optimise) -> _RequestLayout:
    group_of = list(range(num_requests)) if groups is None else [int(g) for g in groups]
    members: dict[int, list[int]] = {}
    for r, g in enumerate(group_of):
        members.setdefault(g, []).append(r)
    kept = {r for r, keep in enumerate(keep_targets or []) if keep and start_targets and start_targets[r] is not None}
    kept = {r for r in kept if all(m in kept for m in members[group_of[r]])}  # a group is kept whole or not at all
    riders = {r for r, o in enumerate(optimise or []) if not o} - kept
    if any(all(m in riders for m in ms) for ms in members.values()):
        raise ValueError("every group needs at least one optimised request")
    steering = {g: [m for m in ms if m not in riders] for g, ms in members.items()}
    plain = [i for i, p in enumerate(prompts) if p.variant == 0]
    prefixed = [i for i, p in enumerate(prompts) if p.variant != 0 and p.request_index not in kept | riders]
    active = set(range(num_requests)) - kept - riders
    return _RequestLayout(num_requests, group_of, members, kept, riders, steering, plain, prefixed, active)


def _prompt_groups(model, adapter: MLPOutputAdapter, z_layer: int, prompts: list[EditPrompt], pad_id: int,
                   tails: list[list[int]] | None, layout: _RequestLayout,
                   plain_group: PromptGroup | None) -> tuple[list[PromptGroup], PromptGroup | None]:
    """The groups the steps run — the plain variants, then the prefixed ones; requests that reach
    their target leave them (rows selected, prefix cache kept) — and the plain rows that need only
    their value at the key token (``None``: no such rows apart)."""
    device = model.get_input_embeddings().weight.device
    plain = layout.plain
    if (plain_group is not None and plain_group.base_logits is not None
            and plain_group.inputs == _row_inputs([prompts[i] for i in plain], tails)):
        group = copy.copy(plain_group)
        group.members = torch.tensor(plain, device=device)  # rows in request order → this prompt list
        others = None
    else:
        # the optimised rows run the whole model once (their logits without δ: the KL term's
        # reference); kept and riding rows need only their value at the key token, below z_layer
        rows = [j for j, i in enumerate(plain) if prompts[i].request_index in layout.active] or list(range(len(plain)))
        rest = sorted(set(range(len(plain))) - set(rows))
        group = PromptGroup(model, [plain[j] for j in rows], prompts, pad_id, device,
                            [tails[j] for j in rows] if tails else None, adapter, z_layer)
        others = (PromptGroup(model, [plain[j] for j in rest], prompts, pad_id, device, None, adapter, z_layer,
                              base_logits=False, replay=group.replay) if rest else None)
    groups = [group]
    if layout.prefixed:
        groups.append(PromptGroup(model, layout.prefixed, prompts, pad_id, device, None, adapter, z_layer,
                                  base_logits=False, replay=group.replay))
    return groups, others


@dataclass
class _Reference:
    """What δ is measured against, from the pass without δ."""

    h0: torch.Tensor
    """Requests × d: block ``z_layer``'s output at the key token of each plain prompt."""
    h0_norm: torch.Tensor
    kl_logp: torch.Tensor
    """Requests × vocabulary: the key token's next-token log-probabilities (the KL term's reference)."""
    gidx: torch.Tensor
    """Request → the index of its δ."""
    g_norm: torch.Tensor
    """Per δ: its group's mean ‖h₀‖ (the bound and the decay of a shared δ use it)."""


def _reference(group: PromptGroup, others: PromptGroup | None, req: torch.Tensor, layout: _RequestLayout) -> _Reference:
    device = req.device
    base_logits, block_out = group.base_logits, group.block_out
    h0 = torch.zeros(layout.num_requests, block_out.shape[-1], device=device)
    for g in (group, others) if others is not None else (group,):  # value at the key token of the plain prompt
        h0[req[g.members]] = g.block_out[:, 0].float().to(device)
    kl_logp = torch.zeros(layout.num_requests, base_logits.shape[-1], device=device)
    kl_logp[req[group.members]] = torch.log_softmax(base_logits[:, KEY].float(), dim=-1)
    h0_norm = h0.norm(dim=-1)
    num_groups = layout.num_groups
    gidx = torch.tensor(layout.group_of, dtype=torch.long, device=device)
    g_norm = torch.zeros(num_groups, device=device).index_add(0, gidx, h0_norm) / \
        torch.zeros(num_groups, device=device).index_add(0, gidx, torch.ones_like(h0_norm)).clamp(min=1)
    return _Reference(h0, h0_norm, kl_logp, gidx, g_norm)


def _start_delta(reference: _Reference, layout: _RequestLayout, start_targets, config: ValueConfig) -> torch.Tensor:
    """δ per group (groups × d): zero, or warm-started at the mean move of its requests' start targets,
    within the bound."""
    h0 = reference.h0
    delta = torch.zeros(layout.num_groups, h0.shape[-1], device=h0.device)
    starts: dict[int, list[torch.Tensor]] = {}
    for r, z in enumerate(start_targets or []):
        if z is not None:
            starts.setdefault(layout.group_of[r], []).append(z.to(delta) - h0[r])
    for g, moves in starts.items():
        move = torch.stack(moves).mean(0)
        delta[g] = move * min(1.0, float(config.clamp_factor * reference.g_norm[g] / move.norm().clamp(min=1e-12)))
    return delta


class _AddDelta:
    """The edit of block ``z_layer``'s output: adds each row's δ at its key token (column 0); ``req``
    holds the requests of the rows being run."""

    def __init__(self, delta: torch.Tensor, gidx: torch.Tensor):
        self.delta, self.gidx = delta, gidx
        self.req: torch.Tensor | None = None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        at = hidden.device  # blocks may sit on different devices under an accelerate device_map
        rows = torch.arange(hidden.shape[0], device=at)
        key_col = torch.zeros(hidden.shape[0], dtype=torch.long, device=at)
        return hidden.index_put((rows, key_col), self.delta[self.gidx[self.req]].to(device=at, dtype=hidden.dtype),
                                accumulate=True)


class _ValueSteps:
    """The Adam steps on δ and what they measured per request."""

    def __init__(self, config: ValueConfig, target_id: int, prompts: list[EditPrompt], layout: _RequestLayout,
                 reference: _Reference, delta: torch.Tensor, req: torch.Tensor, *, scored: bool, minibatch: int | None):
        self.config, self.target_id, self.prompts, self.minibatch, self.scored = config, target_id, prompts, minibatch, scored
        self.layout, self.reference, self.delta, self.req = layout, reference, delta, req
        device, n = delta.device, layout.num_requests
        delta.requires_grad_(True)
        self.optimiser = torch.optim.Adam([delta], lr=config.lr)
        # per δ: what one unit of the learning rate is (its group's hidden-state RMS, or 1)
        self.step_unit = (reference.g_norm / delta.shape[-1] ** 0.5)[:, None] if config.lr_unit == "state" else None
        self.weights = torch.tensor([1.0 / sum(1 for p in prompts if p.request_index == r) for r in range(n)], device=device)
        self.edit = _AddDelta(delta, reference.gidx)
        self.initial = torch.zeros(n, device=device)  # −log p(target) at each request's first run (`evaluated`)
        self.evaluated: set[int] = set()
        self.turn = {g: 0 for g in layout.steering}  # where each group's minibatch goes on
        self.per_request = torch.zeros(n, device=device)  # last measured −log p(target) per request
        self.cont_request = torch.zeros(n, device=device)
        self.ban_request = torch.zeros(n, device=device)  # −log p(refusal start | target banned)
        self.greedy_request = torch.ones(n, dtype=torch.bool, device=device)
        self.steps_taken = [0] * n
        self.reached = set(layout.kept)

    def run(self, groups: list[PromptGroup], bar) -> int:
        """Steps until every active request reached its target or ``config.steps`` ran; the last
        step's index (−1: none ran)."""
        active = self.layout.active
        batches = self._micro_batches(groups, active)
        step = -1
        for step in range(self.config.steps if active else 0):
            self.optimiser.zero_grad()
            if self.minibatch:
                chosen, step_groups = self._choose(groups)
                step_batches = self._micro_batches(step_groups, chosen)
            else:
                chosen, step_batches = active, batches
            # several micro-batches: each back-propagates at once (the gradient accumulates in δ.grad)
            terms = [self._forward(batch, step, backward=len(step_batches) > 1) for batch in step_batches]
            nll, kl, measured = (sum(t[i] for t in terms) for i in range(3))
            done = self._record(measured, chosen, step)
            if done == active:
                bar.total = step + 1  # all reached: the bar ends full, not at "0/20"
                self._show(bar, 0)
                break
            self._descend(nll, kl, done)
            if done:  # they keep their δ; the remaining steps only pay for the requests still moving
                active -= done
                groups = _restrict(groups, self.prompts, active)
                batches = self._micro_batches(groups, active)
            self._show(bar, len(active))
        return step

    def _choose(self, groups: list[PromptGroup]) -> tuple[set[int], list[PromptGroup]]:
        """The requests and groups this step runs: every active one, or with ``minibatch`` at most
        that many optimised questions of each group, taken in turn."""
        if not self.minibatch:
            return self.layout.active, groups
        chosen = set()
        for grp, ms in self.layout.steering.items():
            ms = [m for m in ms if m in self.layout.active]
            if len(ms) > self.minibatch:
                ms = [ms[(self.turn[grp] + k) % len(ms)] for k in range(self.minibatch)]
                self.turn[grp] += self.minibatch
            chosen.update(ms)
        return chosen, _restrict(groups, self.prompts, chosen)

    def _micro_batches(self, groups: list[PromptGroup], requests: set[int]) -> list[list[PromptGroup]]:
        """``groups`` as one batch, or (``config.micro_batch``) split into batches of that many requests."""
        size = self.config.micro_batch
        if not size or len(requests) <= size:
            return [groups]
        ordered = sorted(requests)
        return [_restrict(groups, self.prompts, set(ordered[i:i + size])) for i in range(0, len(ordered), size)]

    def _forward(self, step_groups: list[PromptGroup], step: int, backward: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the groups with δ: the step's NLL and KL terms, and each request's weighted −log p(target).
        ``backward``: a micro-batch, whose terms are back-propagated here and returned detached."""
        config, device = self.config, self.delta.device
        nll = torch.zeros((), device=device)
        measured = torch.zeros(self.layout.num_requests, device=device)
        kl = torch.zeros((), device=device)
        for g in step_groups:
            rows = self.edit.req = self.req[g.members]
            # stale context once a group's first exact step checked it (not with a minibatch,
            # whose rows change each step)
            cheap = (config.context_refresh > 1 and not self.minibatch and g.use_stale_context()
                     and g.stale.verified)
            if cheap and step % config.context_refresh == 0:
                g.stale.refresh_words(g, self.edit)
            logits = g.logits(self.edit, stale=cheap)
            rows_nll = g.target_nll(logits, self.target_id)
            w = self.weights[rows]
            measured = measured.index_add(0, rows, rows_nll.detach() * w)
            nll = nll + (rows_nll * w).sum()
            if g is step_groups[0]:  # the plain prompts: the KL term and the scored continuation
                cur_kl_logp = torch.log_softmax(logits[:, KEY].float(), dim=-1)
                kl = torch.nn.functional.kl_div(self.reference.kl_logp[rows], cur_kl_logp, log_target=True,
                                                reduction="sum")
                if g.tail is not None:
                    nll = self._add_tail_terms(nll, g, logits, rows, w)
        if backward:
            (nll + config.kl_weight * kl).backward()
            nll, kl = nll.detach(), kl.detach()
        return nll, kl, measured

    def _add_tail_terms(self, nll: torch.Tensor, g: PromptGroup, logits: torch.Tensor, rows: torch.Tensor,
                        w: torch.Tensor) -> torch.Tensor:
        """``nll`` plus the continuation's (and the banned start's) terms; records them per request."""
        config = self.config
        tail = g.tail_nll(logits)
        self.cont_request = self.cont_request.index_copy(0, rows, tail.detach())
        if config.greedy_continuation:
            self.greedy_request = self.greedy_request.index_copy(0, rows, g.tail_greedy(logits.detach()))
        nll = nll + config.continuation_weight * tail.sum()
        if config.continuation_margin_weight:
            nll = nll + config.continuation_margin_weight * g.tail_shortfall(logits, config.continuation_margin).sum()
        if config.banned_weight:
            banned = g.banned_nll(logits, self.target_id)
            self.ban_request = self.ban_request.index_copy(0, rows, banned.detach())
            nll = nll + config.banned_weight * (banned * w).sum()
        return nll

    def _record(self, measured: torch.Tensor, chosen: set[int], step: int) -> set[int]:
        """Keep what the step measured; the active requests whose group reached its target (each
        of its optimised requests met the stop criteria when it last ran)."""
        ran = sorted(chosen)
        self.per_request[ran] = measured[ran]
        first = [r for r in ran if r not in self.evaluated]
        self.initial[first] = measured[first]
        self.evaluated.update(ran)
        for r in ran:
            self.steps_taken[r] = step + 1
        rows = sorted(self.layout.active & self.evaluated)  # a minibatch's stop rule reads each request's last run
        met = {r for r in rows if self._met(r)}
        steering, group_of = self.layout.steering, self.layout.group_of
        done = {r for r in rows if all(m in met or m in self.reached for m in steering[group_of[r]])}
        if log.isEnabledFor(logging.DEBUG):  # the maxima cost a synchronisation: only when logged
            log.debug("value step %d: %d active, −log p(target) max %.3f, continuation max %.3f, %d reached",
                      step + 1, len(rows), self.per_request[rows].max().item(), self.cont_request[rows].max().item(),
                      len(done))
        self.reached |= done
        return done

    def _met(self, r: int) -> bool:
        """Whether request r's last run met the stop criteria (target, and continuation when scored)."""
        config, scored = self.config, self.scored
        return (self.per_request[r] < config.stop_loss
                and (not scored or self.cont_request[r] < config.continuation_stop)
                and (not (scored and config.banned_weight) or self.ban_request[r] < config.banned_stop)
                and (not (scored and config.greedy_continuation) or bool(self.greedy_request[r])))

    def _descend(self, nll: torch.Tensor, kl: torch.Tensor, done: set[int]) -> None:
        """One Adam step on the moving groups' δ, projected onto the ball ‖δ‖ ≤ c‖h₀‖; the δ of the
        groups that stop moving stays as it is."""
        config, delta, g_norm = self.config, self.delta, self.reference.g_norm
        moving = {self.layout.group_of[r] for r in self.layout.active - done}
        frozen = sorted(set(range(self.layout.num_groups)) - moving)
        keep = delta.detach()[frozen].clone()
        decay = (delta.norm(dim=-1) / g_norm.pow(2).clamp(min=1e-12)).sum()
        loss = nll + config.kl_weight * kl + config.weight_decay * decay
        loss.backward()
        before = delta.detach().clone() if self.step_unit is not None else None
        self.optimiser.step()
        with torch.no_grad():
            if before is not None:  # Adam's step is about lr per coordinate: scaled to the state's unit
                delta.copy_(before + (delta - before) * self.step_unit)
            limit = config.clamp_factor * g_norm
            norms = delta.norm(dim=-1)
            scale = torch.where(norms > limit, limit / norms.clamp(min=1e-12), torch.ones_like(norms))
            delta.mul_(scale[:, None])
            delta[frozen] = keep

    def _show(self, bar, active: int) -> None:
        bar.set_postfix(nll=f"{self.per_request.max().item():.3f}", continuation=f"{self.cont_request.max().item():.3f}",
                        active=active, refresh=False)
        bar.update()

    def report(self, last_step: int) -> ValueReport:
        layout, reference = self.layout, self.reference

        def reported(values: torch.Tensor) -> list[float | None]:  # None: a kept target, not evaluated
            return [None if r in layout.kept or r in layout.riders or r not in self.evaluated else round(x, 4)
                    for r, x in enumerate(values.tolist())]

        return ValueReport(
            steps=last_step + 1,
            initial_nll=reported(self.initial),
            final_nll=reported(self.per_request),
            final_continuation_nll=reported(self.cont_request),
            delta_norm_ratio=[round(x, 4) for x in
                              (self.delta.detach()[reference.gidx].norm(dim=-1) / reference.h0_norm).tolist()],
            steps_per_request=self.steps_taken,
            converged=[r in self.reached for r in range(layout.num_requests)],
        )

    def targets(self) -> torch.Tensor:
        """Z = h₀ + δ of each request's group (d × N, CPU)."""
        return (self.reference.h0 + self.delta.detach()[self.reference.gidx]).T.cpu()
