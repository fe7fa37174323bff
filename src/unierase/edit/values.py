"""Target values: the residual-stream change at the last edited layer that makes ``[UNL]`` next.

For each request a vector δ is added to block L*'s output at the key token of every prompt
variant and optimised so the model predicts the target token after the prompt; z = h₀ + δ is the
value the closed-form update then writes into the MLP output projections.

Optionally the whole answer the token leads into (``[UNL] refusal [UNL] <eos>``) is the target:
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
from ..models.tracing import edit_output, frozen_parameters, head_at, replay_blocks, stop_after, trace
from ..generation import prefill
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
    """Adam learning rate on δ (a small model converges in fewer steps at a higher rate)."""
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
    continuation_tokens: int | None = 8
    """Score only the first this many continuation tokens (``None`` = the whole refusal; fewer are cheaper)."""
    continuation_stop: float = 0.6
    """Per-token mean −log p of the continuation under which a request counts as converged."""
    banned_weight: float = 0.0
    """Weight of −log p(the refusal's first token) at the last prompt position with the target token
    masked out, so that decoding with the token banned starts the refusal, not the fact (0 = off)."""
    banned_stop: float = 0.7
    """With ``banned_weight``: that −log p under which a request counts as converged."""
    context_refresh: int = 1
    """> 1: after a first exact step, steps run only the key token, the prompt's end and the scored
    continuation, the question's words after the key token recomputed at the current δ every this
    many steps (``stale_context``); 1 = every step exact."""
    greedy_continuation: bool = False
    """A request also converges only once its scored continuation is its greedy one, and after an
    edit pass it counts as reached only once the edited model continues that way (else it gets
    another pass, optimised on the edited model): the refusal comes out whole, not cut."""

    def __post_init__(self):
        from ..storage import UniEraseError

        problems = [f"{name} must be {rule} (got {getattr(self, name)!r})" for name, rule, ok in (
            ("steps", "at least 1", self.steps >= 1),
            ("context_refresh", "at least 1", self.context_refresh >= 1),
            ("lr", "positive", self.lr > 0),
            ("clamp_factor", "positive", self.clamp_factor > 0),
            ("kl_weight", "≥ 0", self.kl_weight >= 0),
            ("weight_decay", "≥ 0", self.weight_decay >= 0),
            ("stop_loss", "≥ 0 (0: never stop early)", self.stop_loss >= 0),
            ("continuation_weight", "≥ 0", self.continuation_weight >= 0),
            ("banned_weight", "≥ 0", self.banned_weight >= 0),
            ("continuation_tokens", "None or ≥ 0", self.continuation_tokens is None or self.continuation_tokens >= 0),
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
                self.replay = bool(torch.allclose(replayed, self.base_logits[:1], atol=1e-3, rtol=1e-3))
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
        sub.cache.batch_select_indices(idx)
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
                ok = bool(torch.allclose(self.stale.logits(self, edit), exact, atol=1e-3, rtol=1e-3))
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


def _restrict(groups: list[PromptGroup], prompts: list[EditPrompt], requests: set[int]) -> list[PromptGroup]:
    """The groups restricted to the rows of ``requests`` (empty groups dropped)."""
    return [g.subset(rows) for g in groups
            if (rows := [i for i, m in enumerate(g.members.tolist()) if prompts[m].request_index in requests])]


def _tails(prompts: list[EditPrompt], plain: list[int], target_id: int, config: ValueConfig | list[ValueConfig],
           continuations: list[list[int]] | None) -> list[list[int]] | None:
    """The teacher-forced target of each plain prompt (target token + scored continuation), or
    ``None`` when only the first token is scored. ``config``: one for all, or one per request."""

    def scored(c: ValueConfig) -> int:  # continuation tokens scored under c (None: all)
        return 0 if not continuations or c.continuation_weight <= 0 or c.continuation_tokens == 0 else c.continuation_tokens

    per_request = config if isinstance(config, list) else None
    counts = [scored(per_request[prompts[i].request_index] if per_request else config) for i in plain]
    if all(n == 0 for n in counts):
        return None
    return [[target_id] + (list(continuations[prompts[i].request_index])[:n] if n != 0 else [])
            for i, n in zip(plain, counts)]


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

    # The plain and the prefixed variants, as two groups; requests that reach their target leave
    # them (rows selected, prefix cache kept).
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
    tails = _tails(prompts, plain, target_id, config, continuations)
    active = set(range(num_requests)) - kept - riders
    req = torch.tensor([p.request_index for p in prompts], device=device)
    if (plain_group is not None and plain_group.base_logits is not None
            and plain_group.inputs == _row_inputs([prompts[i] for i in plain], tails)):
        group = copy.copy(plain_group)
        group.members = torch.tensor(plain, device=device)  # rows in request order → this prompt list
        others = None
    else:
        # the optimised rows run the whole model once (their logits without δ: the KL term's
        # reference); kept and riding rows need only their value at the key token, below z_layer
        rows = [j for j, i in enumerate(plain) if prompts[i].request_index in active] or list(range(len(plain)))
        rest = sorted(set(range(len(plain))) - set(rows))
        group = PromptGroup(model, [plain[j] for j in rows], prompts, pad_id, device,
                            [tails[j] for j in rows] if tails else None, adapter, z_layer)
        others = (PromptGroup(model, [plain[j] for j in rest], prompts, pad_id, device, None, adapter, z_layer,
                              base_logits=False, replay=group.replay) if rest else None)
    groups = [group]
    if prefixed:
        groups.append(PromptGroup(model, prefixed, prompts, pad_id, device, None, adapter, z_layer, base_logits=False,
                                  replay=group.replay))
    base_logits, block_out = group.base_logits, group.block_out
    h0 = torch.zeros(num_requests, block_out.shape[-1], device=device)
    for g in (group, others) if others is not None else (group,):  # value at the key token of the plain prompt
        h0[req[g.members]] = g.block_out[:, 0].float().to(device)
    init_kl_logp = torch.zeros(num_requests, base_logits.shape[-1], device=device)
    init_kl_logp[req[group.members]] = torch.log_softmax(base_logits[:, KEY].float(), dim=-1)
    h0_norm = h0.norm(dim=-1)
    num_groups = max(group_of) + 1 if group_of else 0
    gidx = torch.tensor(group_of, dtype=torch.long, device=device)
    # the bound and the decay of a shared δ use its group's mean ‖h₀‖
    g_norm = torch.zeros(num_groups, device=device).index_add(0, gidx, h0_norm) / \
        torch.zeros(num_groups, device=device).index_add(0, gidx, torch.ones_like(h0_norm)).clamp(min=1)
    for g in groups:
        g.base_logits = None
    del base_logits
    if (kept or riders) and others is None:  # their plain rows leave too (the prefixed group never had them)
        groups = _restrict(groups, prompts, active)

    delta = torch.zeros(num_groups, h0.shape[-1], device=device)
    starts: dict[int, list[torch.Tensor]] = {}
    for r, z in enumerate(start_targets or []):
        if z is not None:
            starts.setdefault(group_of[r], []).append(z.to(delta) - h0[r])
    for g, moves in starts.items():  # a shared δ starts at its requests' mean move
        move = torch.stack(moves).mean(0)
        delta[g] = move * min(1.0, float(config.clamp_factor * g_norm[g] / move.norm().clamp(min=1e-12)))
    log.debug("target values: %d requests (%d optimised, %d groups), set up in %.2f s", num_requests, len(active),
              num_groups, time.perf_counter() - started)
    delta.requires_grad_(True)
    optimiser = torch.optim.Adam([delta], lr=config.lr)
    weights = torch.tensor([1.0 / sum(1 for p in prompts if p.request_index == r) for r in range(num_requests)], device=device)
    current: dict[str, torch.Tensor] = {}

    def add_delta(hidden):
        at = hidden.device  # blocks may sit on different devices under an accelerate device_map
        rows = torch.arange(hidden.shape[0], device=at)
        key_col = torch.zeros(hidden.shape[0], dtype=torch.long, device=at)
        return hidden.index_put((rows, key_col), delta[gidx[current["req"]]].to(device=at, dtype=hidden.dtype),
                                accumulate=True)

    initial = torch.zeros(num_requests, device=device)  # −log p(target) at each request's first run (`evaluated`)
    evaluated: set[int] = set()
    turn = {g: 0 for g in steering}  # where each group's minibatch goes on
    per_request = torch.zeros(num_requests, device=device)  # last measured −log p(target) per request
    cont_request = torch.zeros(num_requests, device=device)
    ban_request = torch.zeros(num_requests, device=device)  # −log p(refusal start | target banned)
    greedy_request = torch.ones(num_requests, dtype=torch.bool, device=device)
    steps_taken = [0] * num_requests
    reached = set(kept)
    step = -1
    bar = tqdm(total=config.steps, desc="target values", disable=not progress or not active)
    with frozen_parameters(model):  # only δ is optimised: no weight gradient is needed
        for step in range(config.steps if active else 0):
            optimiser.zero_grad()
            nll = torch.zeros((), device=device)
            measured = torch.zeros(num_requests, device=device)
            kl = torch.zeros((), device=device)
            if minibatch:
                chosen = set()
                for grp, ms in steering.items():
                    ms = [m for m in ms if m in active]
                    if len(ms) > minibatch:
                        ms = [ms[(turn[grp] + k) % len(ms)] for k in range(minibatch)]
                        turn[grp] += minibatch
                    chosen.update(ms)
                step_groups = _restrict(groups, prompts, chosen)
            else:
                chosen, step_groups = active, groups
            for g in step_groups:
                current["req"] = req[g.members]
                # stale context once a group's first exact step checked it (not with a minibatch,
                # whose rows change each step)
                cheap = (config.context_refresh > 1 and not minibatch and g.use_stale_context()
                         and g.stale.verified)
                if cheap and step % config.context_refresh == 0:
                    g.stale.refresh_words(g, add_delta)
                logits = g.logits(add_delta, stale=cheap)
                rows_nll = g.target_nll(logits, target_id)
                w = weights[current["req"]]
                measured = measured.index_add(0, current["req"], rows_nll.detach() * w)
                nll = nll + (rows_nll * w).sum()
                if g is step_groups[0]:
                    cur_kl_logp = torch.log_softmax(logits[:, KEY].float(), dim=-1)
                    kl = torch.nn.functional.kl_div(init_kl_logp[current["req"]], cur_kl_logp, log_target=True, reduction="sum")
                    if g.tail is not None:
                        tail = g.tail_nll(logits)
                        cont_request = cont_request.index_copy(0, current["req"], tail.detach())
                        if config.greedy_continuation:
                            greedy_request = greedy_request.index_copy(0, current["req"], g.tail_greedy(logits.detach()))
                        nll = nll + config.continuation_weight * tail.sum()
                        if config.banned_weight:
                            banned = g.banned_nll(logits, target_id)
                            ban_request = ban_request.index_copy(0, current["req"], banned.detach())
                            nll = nll + config.banned_weight * (banned * w).sum()
            ran = sorted(chosen)
            per_request[ran] = measured[ran]
            first = [r for r in ran if r not in evaluated]
            initial[first] = measured[first]
            evaluated.update(ran)
            for r in ran:
                steps_taken[r] = step + 1
            rows = sorted(active & evaluated)  # a minibatch's stop rule reads each request's last run
            # A request whose target (and continuation) is reached keeps its δ and leaves the batch, so
            # the remaining steps only pay for the requests still moving.
            met = {r for r in rows if per_request[r] < config.stop_loss
                   and (not scored or cont_request[r] < config.continuation_stop)
                   and (not (scored and config.banned_weight) or ban_request[r] < config.banned_stop)
                   and (not (scored and config.greedy_continuation) or bool(greedy_request[r]))}
            done = {r for r in rows if all(m in met or m in reached for m in steering[group_of[r]])}
            if log.isEnabledFor(logging.DEBUG):  # the maxima cost a synchronisation: only when logged
                log.debug("value step %d: %d active, −log p(target) max %.3f, continuation max %.3f, %d reached",
                          step + 1, len(rows), per_request[rows].max().item(), cont_request[rows].max().item(), len(done))
            reached |= done
            if done == active:
                bar.total = step + 1  # all reached: the bar ends full, not at "0/20"
                bar.set_postfix(nll=f"{per_request.max().item():.3f}", continuation=f"{cont_request.max().item():.3f}",
                                active=0, refresh=False)
                bar.update()
                break
            moving = {group_of[r] for r in active - done}
            frozen = sorted(set(range(num_groups)) - moving)
            keep = delta.detach()[frozen].clone()
            decay = (delta.norm(dim=-1) / g_norm.pow(2).clamp(min=1e-12)).sum()
            loss = nll + config.kl_weight * kl + config.weight_decay * decay
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                limit = config.clamp_factor * g_norm
                norms = delta.norm(dim=-1)
                scale = torch.where(norms > limit, limit / norms.clamp(min=1e-12), torch.ones_like(norms))
                delta.mul_(scale[:, None])
                delta[frozen] = keep
            if done:
                active -= done
                groups = _restrict(groups, prompts, active)
            bar.set_postfix(nll=f"{per_request.max().item():.3f}", continuation=f"{cont_request.max().item():.3f}",
                            active=len(active), refresh=False)
            bar.update()
    bar.close()
    log.debug("target values: %d steps, %.2f s in all", step + 1, time.perf_counter() - started)

    def reported(values: torch.Tensor | None) -> list[float | None]:  # None: a kept target, not evaluated
        values = per_request if values is None else values
        return [None if r in kept or r in riders or r not in evaluated else round(x, 4) for r, x in enumerate(values.tolist())]

    report = ValueReport(
        steps=step + 1,
        initial_nll=reported(initial),
        final_nll=reported(per_request),
        final_continuation_nll=reported(cont_request),
        delta_norm_ratio=[round(x, 4) for x in (delta.detach()[gidx].norm(dim=-1) / h0_norm).tolist()],
        steps_per_request=steps_taken,
        converged=[r in reached for r in range(num_requests)],
    )
    z = (h0 + delta.detach()[gidx]).T.cpu()
    return z, h0.T.cpu(), report
