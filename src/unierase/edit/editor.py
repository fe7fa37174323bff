"""Phase II: one round of the Unlearning Edit over a batch of forget requests.

prompts → key positions → target values at the last edited layer → per layer (in order):
keys on the current model, residual spread over the remaining layers, closed-form update.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from ..models.adapters import MLPOutputAdapter
from ..prompts import has_chat_template
from ..refusals import refusal_for, refusal_pool
from ..requests import ForgetRequest
from ..token.training import answer_ids
from .applied import AppliedUpdates
from .config import EditConfig
from .keys import LowerBlocks, choose_key_chars, request_keys_and_values
from .scope import compact_groups, described_requests, shared_rows
from .preserved import PreservedKeys, SoftConstraint
from .refit import answers_hold, can_refit, prefill_questions, refit_examples, refit_input_row, starts_with
from .prompts import EditPrompt, build_edit_prompts
from .solve import SOLVERS
from .values import PromptGroup, compute_target_values, plain_prompt_group, scored_continuation

log = logging.getLogger(__name__)


@dataclass
class RoundReport:
    layers: list[int]
    key_tokens: list[str]
    timings_s: dict[str, float]
    values: dict
    null_dims: dict[int, int]
    residual_norms: dict[int, float]
    update_norms: dict[int, float]
    residual_left: float
    """‖Z − H_after‖ / ‖Z − H_before‖ at the last edited layer, averaged over requests: how much of the
    target change the closed-form update did not write (0 = all of it)."""
    targets: torch.Tensor | None = field(default=None, repr=False)
    """Z (d × N): the target values this round wrote towards (a warm start for a further pass)."""
    keys: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    """Layer → the keys (m × N) the update was solved for."""
    after: PromptGroup | None = field(default=None, repr=False)
    """The plain prompts run on the edited model (``values.plain_prompt_group``): each request's
    first answer token now, and the start of a further pass's value optimisation."""


@dataclass
class PassesResult:
    """What ``run_edit_passes`` did: one record per pass, the requests never reached, the last pass."""

    passes: list[dict]
    not_reached: list[ForgetRequest]
    key_tokens: list[str]
    last: RoundReport
    not_reached_indices: list[int] = field(default_factory=list)
    """Indices (into the requests given) of ``not_reached``."""
    updates: AppliedUpdates | None = field(default=None, repr=False)
    """The passes' updates as applied (their factors are the round's revert data)."""


def run_edit_passes(model, tokenizer, adapter: MLPOutputAdapter, requests: list[ForgetRequest], target_id: int,
                    config: EditConfig, preserved: PreservedKeys, *, progress: bool = True,
                    answer_ids: list[list[int]] | None = None,
                    groups: list[int] | None = None, entity_scope: list[str | None] | None = None) -> PassesResult:
    """Edit rounds until every request's greedy first answer token is ``target_id`` (at most
    ``config.max_passes``, ``STALL_PASSES``); each further pass covers only the requests not reached yet.
    ``preserved``: what the updates leave alone (``preserved.build_preserved_keys``); its state
    ends up holding every pass's keys and the round's soft constraint. ``answer_ids``: the model's
    greedy answers to the requests, if the caller has them (``preserved.soft_constraint_keys``).
    ``groups`` and ``entity_scope``: the shared targets and the entity-scope requests (``scope.resolve_scope``).
    """
    preserved.begin_round(model, tokenizer, adapter, requests, config, answer_ids, entity_scope)
    described = described_requests(requests, entity_scope)
    updates = AppliedUpdates(adapter)
    pending = list(range(len(requests)))
    targets: list[torch.Tensor | None] = [None] * len(requests)
    converged = [False] * len(requests)  # target value reached in an earlier pass
    kept = set()  # requests whose keys are in the preserved state (once each)
    passes, key_tokens, report, carried, stalled, rechecked = [], [], None, None, False, False
    idle, given_up = 0, []  # passes in a row that reached none; requests set aside when they stall
    refitting = can_refit(model, config.refit)
    for number in range(config.max_passes):
        ran = list(pending)
        # a further pass starts each pending request's δ at its previous target and keeps the targets
        # that converged (the layers above the edit are unchanged, so they still serve). A request's
        # keys join the preserved term once it is reached: preserving a pending request's own earlier
        # keys would make each of its further updates fight the last one (each pass writing less)
        report = run_edit_round(model, tokenizer, adapter, [requests[i] for i in pending], target_id, config, preserved,
                                progress=progress, preserve_keys=False, updates=updates,
                                start_targets=[targets[i] for i in pending],
                                keep_targets=[converged[i] for i in pending],
                                plain_group=carried, groups=compact_groups([groups[i] for i in pending]) if groups else None,
                                described=[described[i] for i in pending],
                                optimise=_steering([requests[i] for i in pending], [groups[i] for i in pending],
                                                   config.group_value_questions)
                                if groups and not config.group_value_rotation else None)
        key_tokens = key_tokens or report.key_tokens
        holds = _take_pass(report, pending, targets, converged, target_id, config)
        reached = sum(holds)
        passes.append({"requests": len(pending), "reached": reached, "residual_left": report.residual_left,
                       "timings_s": report.timings_s, "values": report.values})
        still = [j for j, h in enumerate(holds) if not h]
        _preserve_columns(preserved, report.keys, [j for j, h in enumerate(holds) if h and pending[j] not in kept])
        kept.update(pending[j] for j, h in enumerate(holds) if h)
        carried = report.after.subset(still) if still else None
        earlier = sorted(set(range(len(requests))) - set(pending) - set(given_up))  # reached before this pass
        pending = [pending[j] for j in still]
        # a pass may undo part of an earlier one: the requests are checked again the first time all are reached
        # (all of them: a refit of the token's row may follow), after the last pass and (without a refit) at the
        # first pass that reaches none; any the model no longer holds run again (their keys stay preserved once).
        # Each check costs a forward of every prompt, so the passes for requests undone then check only themselves
        first_stall = not reached and not stalled
        stalled = stalled or not reached
        idle = 0 if reached else idle + 1
        if pending and idle >= STALL_PASSES:
            # the writes no longer move them: spare the passes that requests a check finds undone need
            log.info("%d request(s) reached by none of the last %d passes: set aside, not reached", len(pending), idle)
            passes[-1]["set_aside"] = len(pending)
            _preserve_columns(preserved, report.keys, [j for j in still if ran[j] not in kept])
            kept.update(pending)
            given_up, pending, carried, idle = given_up + pending, [], None, 0
        final = not pending
        checked = [i for i in range(len(requests)) if i not in given_up] if final else earlier
        if checked and ((final and not rechecked) or (first_stall and not refitting)
                        or number == config.max_passes - 1):
            rechecked = rechecked or final
            undone = _note_check(passes[-1], _recheck(model, tokenizer, requests, checked, target_id, config, groups,
                                                      final=final), len(checked))
            for i in undone:
                converged[i] = False
            carried = None if undone else carried  # the next pass runs their plain prompts afresh
            pending = pending + undone
        preserved.keep_pending(pending)
        if not pending:
            break
    if pending:  # never reached: later rounds keep what the last pass wrote for them (once)
        _preserve_columns(preserved, report.keys, [j for j in still if ran[j] not in kept])
    preserved.end_round(config)
    missed = given_up + pending
    return PassesResult(passes, [requests[i] for i in missed], key_tokens, report, missed, updates)


def _take_pass(report: RoundReport, pending: list[int], targets: list, converged: list[bool], target_id: int,
               config: EditConfig) -> list[bool]:
    """Note a pass's targets and which converged (per request of ``pending``, in place); whether each
    request now holds (``_holds``)."""
    for j, i in enumerate(pending):
        targets[i] = report.targets[:, j]
        converged[i] = report.values["converged"][j]
    holds, firsts = _holds(report.after, target_id, config), report.after.first_tokens()
    for j, i in enumerate(pending):
        if firsts[j] == target_id and not holds[j]:  # the token without the whole refusal: another
            converged[i] = False                      # pass, its δ optimised on the edited model
    return holds


STALL_PASSES = 3
"""Passes in a row that reach no request after which the pending ones are set aside, so that the
requests the round's check finds undone still get passes (on Gemma's TOFU target three requests
ran the last six passes, each realising about 2 % of what was left; on SmolLM2 a request has been
reached at the third try)."""


def _note_check(record: dict, check: dict, checked: int) -> list[int]:
    """Note a re-check (``_recheck``) in its pass's record and the log; the requests it found undone."""
    record["undone"] = len(check["undone"])
    if check["refit"] is not None:
        record["refit"] = check["refit"]
    if check["undone"]:
        log.info("%d of %d requests reached were undone by a later pass: further passes", len(check["undone"]), checked)
    return check["undone"]


def _recheck(model, tokenizer, requests: list[ForgetRequest], indices: list[int], target_id: int, config: EditConfig,
             groups: list[int] | None, *, final: bool = False) -> dict:
    """Check the requests ``indices`` (reached) on the edited model: ``undone``, those whose greedy
    answer no longer starts with the target and (with ``greedy_continuation``) goes on with the
    whole refusal, as ``_holds`` reads a pass's check. Most of those still start with the token and
    only go on otherwise: where the token's input row can be refitted (``refit.can_refit``) and
    some of those are undone, it is refitted on them and a few that hold (``refit.refit_examples``),
    and kept unless more are undone with it; at the round's last check (``final``) with nothing to
    mend, on all of them (``RefitConfig.at_end``). ``refit`` says what it did. The prompts run once
    for the checks and the refit (neither changes anything before the token)."""
    refit = can_refit(model, config.refit)
    shared = shared_rows(compact_groups(groups) if groups else None, len(requests))
    continuations = _continuations(tokenizer, [requests[i] for i in indices], target_id, config)
    # what the passes wait for after the token (``_holds``): the continuation the values score
    greedy = config.values.greedy_continuation
    tails = [scored_continuation(c, config.entity_values if shared[i] else config.values) if greedy else []
             for i, c in zip(indices, continuations)]
    prefilled = prefill_questions(model, tokenizer, [requests[i].question for i in indices], config.refit.batch_size)
    row = {i: j for j, i in enumerate(indices)}

    def undone_now() -> list[int]:
        holds = answers_hold(model, tokenizer, prefilled, target_id, tails)
        return [i for i in indices if not holds[row[i]]]

    undone = undone_now()
    starts = starts_with(prefilled, target_id)
    mendable = [row[i] for i in undone if starts[row[i]]]  # the token first: only what follows it is off
    at_end = final and config.refit.at_end and not mendable
    if not (refit and (mendable or at_end)):
        return {"undone": undone, "refit": None}
    emb = model.get_input_embeddings().weight
    trained = emb[target_id].detach().clone()
    anchors = len(indices) if at_end else config.refit.anchors
    fitted = refit_examples(mendable, [row[i] for i in indices if i not in set(undone)], anchors)
    report = refit_input_row(model, tokenizer, target_id, prefilled.select(fitted), config.refusal, config.refit)
    after = undone_now()
    report.update(undone_before=len(undone), undone_after=len(after), kept=len(after) <= len(undone))
    if not report["kept"]:
        with torch.no_grad():
            emb[target_id] = trained
        log.warning("refitting the token row undid %d reached requests (%d without it): the row is kept as it was",
                    len(after), len(undone))
        return {"undone": undone, "refit": report}
    return {"undone": after, "refit": report}


def _holds(after: PromptGroup, target_id: int, config: EditConfig) -> list[bool]:
    """Per row of a check on the edited model: whether the greedy answer starts with the target
    (and, with ``greedy_continuation``, goes on with the whole refusal): what "reached" means."""
    firsts = after.first_tokens()
    whole = after.tail_greedy().tolist() if config.values.greedy_continuation else [True] * len(firsts)
    return [f == target_id and w for f, w in zip(firsts, whole)]


def _continuations(tokenizer, requests: list[ForgetRequest], target_id: int, config: EditConfig) -> list[list[int]]:
    """Per request: the token ids that follow the target token (the refusal and the end of turn)."""
    refusals, chat = refusal_pool(config.refusal), has_chat_template(tokenizer)
    return [answer_ids(tokenizer, refusal_for(r.question, refusals), target_id, chat)[1:] for r in requests]


def _preserve_columns(preserved: PreservedKeys, keys: dict[int, torch.Tensor], columns: list[int]) -> None:
    """Add the keys of some of a pass's requests (columns of ``RoundReport.keys``) to the preserved state."""
    if columns:
        for layer, k in keys.items():
            preserved.state.add(layer, k[:, columns])


def _steering(requests: list[ForgetRequest], groups: list[int], limit: int | None) -> list[bool] | None:
    """Per request: whether it takes part in optimising its group's δ (``EditConfig.group_value_questions``)."""
    if limit is None:
        return None
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    chosen = set()
    for ms in members.values():  # evenly spread over the group's questions ordered by length
        ordered, n = sorted(ms, key=lambda i: (len(requests[i].question), i)), min(max(1, limit), len(ms))
        chosen.update(ordered[round(k * (len(ordered) - 1) / max(1, n - 1))] for k in range(n))
    return [i in chosen for i in range(len(requests))]


def _target_values(model, adapter, z_layer, prompts: list[EditPrompt], num_requests: int, target_id: int, pad: int,
                   config: EditConfig, progress: bool, *, continuations, start_targets, plain_group, keep_targets,
                   groups, optimise, shared: list[bool] | None = None) -> tuple[torch.Tensor, dict]:
    """``compute_target_values`` with ``config.values`` for the requests with their own target and
    with ``config.entity_values`` for the targets an entity group shares (``shared``, from
    ``scope.shared_rows``, computed here when not given); (Z, report as a dict)."""
    shared = shared_rows(groups, num_requests) if shared is None else shared
    parts = [(config.values, [r for r in range(num_requests) if not shared[r]]),
             (config.entity_values, [r for r in range(num_requests) if shared[r]])]
    targets, reports = None, []
    for value_config, part in parts:
        if not part:
            continue
        index = {r: j for j, r in enumerate(part)}

        def pick(values, part=part):
            return [values[r] for r in part] if values is not None else None

        sub_prompts = [replace(p, request_index=index[p.request_index]) for p in prompts if p.request_index in index]
        z, _, report = compute_target_values(
            model, adapter, z_layer, sub_prompts, len(part), target_id, pad, value_config, progress,
            continuations=pick(continuations), start_targets=pick(start_targets),
            plain_group=plain_group.subset(part) if plain_group is not None and len(part) < num_requests else plain_group,
            keep_targets=pick(keep_targets), groups=compact_groups(pick(groups)) if groups else None,
            optimise=pick(optimise),
            minibatch=config.group_value_questions if config.group_value_rotation and groups else None)
        if targets is None:
            targets = torch.zeros(z.shape[0], num_requests, dtype=z.dtype)
        targets[:, part] = z
        reports.append((part, asdict(report)))
    if len(reports) == 1:
        return targets, reports[0][1]
    merged = {"steps": max(r["steps"] for _, r in reports)}
    for name, value in reports[0][1].items():
        if isinstance(value, list):
            merged[name] = [None] * num_requests
            for part, report in reports:
                for j, r in enumerate(part):
                    merged[name][r] = report[name][j]
    return targets, merged


def run_edit_round(model, tokenizer, adapter: MLPOutputAdapter, requests: list[ForgetRequest], target_id: int,
                   config: EditConfig, preserved: PreservedKeys, *, progress: bool = True,
                   start_targets: list[torch.Tensor | None] | None = None, keep_targets: list[bool] | None = None,
                   plain_group: PromptGroup | None = None,
                   groups: list[int] | None = None, optimise: list[bool] | None = None,
                   described: list[bool] | None = None,
                   preserve_keys: bool = True, updates: AppliedUpdates | None = None) -> RoundReport:
    """Edit ``model`` in place so each request's answer starts with ``target_id``.

    ``preserved`` holds what the update must keep (its state: K_p K_pᵀ of earlier edits; this round's
    keys are added to it; its round's soft constraint, measured here when it has none);
    ``start_targets`` warm-starts the target values and ``keep_targets`` keeps some of them as they
    are (``compute_target_values``);
    ``plain_group``: the previous pass's ``RoundReport.after`` restricted to these requests;
    ``groups``: requests sharing one target value (``compute_target_values``);
    ``described``: the requests keyed at their question's end (``keys.choose_key_chars``);
    ``preserve_keys``: add this round's keys to ``preserved.state`` (``run_edit_passes`` adds them
    itself, once each request is reached); ``updates``: where the updates are applied (the passes
    of one round share one).
    """
    timings: dict[str, float] = {}
    layers = config.resolved_layers(adapter.num_layers)
    pad = tokenizer.pad_token_id

    null_dims = {layer: basis.shape[1] for layer, basis in preserved.bases.items()}
    started = time.perf_counter()
    shared = shared_rows(groups, len(requests))
    ends = choose_key_chars(model, tokenizer, adapter, requests, config.key_position, layers[0], preserved.basis(layers[0]),
                            described)
    prompts = _round_prompts(tokenizer, requests, ends, shared, config)
    key_tokens = [tokenizer.decode([p.input_ids[p.key_index]]) for p in prompts if p.variant == 0]
    timings["key_positions"] = time.perf_counter() - started

    started = time.perf_counter()
    z_layer = layers[-1]
    continuations = _continuations(tokenizer, requests, target_id, config)
    targets, value_report = _target_values(model, adapter, z_layer, prompts, len(requests), target_id, pad, config,
                                           progress, continuations=continuations, start_targets=start_targets,
                                           plain_group=plain_group, keep_targets=keep_targets, groups=groups,
                                           optimise=optimise, shared=shared)
    timings["target_values"] = time.perf_counter() - started

    started = time.perf_counter()
    sweep = _solve_layers(model, tokenizer, adapter, requests, prompts, targets, config, preserved, layers=layers,
                          preserve_keys=preserve_keys, updates=updates or AppliedUpdates(adapter))
    timings["solve"] = time.perf_counter() - started
    started = time.perf_counter()
    after = plain_prompt_group(model, adapter, z_layer, prompts, target_id, pad,
                               [config.entity_values if s else config.values for s in shared], continuations)
    final = after.values()
    timings["check"] = time.perf_counter() - started
    left = float(((targets - final).norm(dim=0) / (targets - sweep.initial).norm(dim=0).clamp(min=1e-12)).mean())
    return RoundReport(layers, key_tokens, {k: round(v, 3) for k, v in timings.items()}, value_report,
                       null_dims, sweep.residual_norms, sweep.update_norms, round(left, 4), targets, sweep.keys, after)


def _round_prompts(tokenizer, requests: list[ForgetRequest], ends: list[int | None], shared: list[bool],
                   config: EditConfig) -> list[EditPrompt]:
    """Every request's edit prompts (``build_edit_prompts``), in request order."""
    prompts = []
    for i, (r, end) in enumerate(zip(requests, ends)):
        # a request sharing its target runs plain only: the group's other questions vary the context
        # the prefixes would, at a third of the value optimisation's cost
        prefixes, suffixes = (0, 0) if shared[i] else (config.num_prefixes, config.num_suffixes)
        prompts += build_edit_prompts(tokenizer, r.question, i, end, prefixes, suffixes)
    return prompts


@dataclass
class _Sweep:
    """What the layer sweep wrote and measured."""

    initial: torch.Tensor
    """The values at the last edited layer before the sweep (d × N)."""
    residual_norms: dict[int, float]
    update_norms: dict[int, float]
    keys: dict[int, torch.Tensor]
    """Layer → the keys (m × N) its update was solved for."""


def _solve_layers(model, tokenizer, adapter: MLPOutputAdapter, requests: list[ForgetRequest], prompts: list[EditPrompt],
                  targets: torch.Tensor, config: EditConfig, preserved: PreservedKeys, *, layers: list[int],
                  preserve_keys: bool, updates: AppliedUpdates) -> _Sweep:
    """Update each layer in order towards ``targets``, each taking its share of what is left at the
    last edited layer (keys and values measured on the model as edited so far)."""
    z_layer, pad = layers[-1], tokenizer.pad_token_id
    soft = preserved.soft
    if soft is None:
        # measured once before the sweep for all layers (a soft constraint: the few-percent change the
        # sweep's earlier layers make to them does not matter, and one pass is a fifth of the cost)
        soft = SoftConstraint.measure(model, tokenizer, adapter, requests, layers, config, preserved.bases)
    # an update at layer l leaves the blocks below l alone: each key pass replays the block output
    # the previous pass recorded below its layer and records the one below its own layer
    lower = LowerBlocks(adapter.blocks, keep=layers[0] - 1) if layers[0] > 0 else None
    initial = None
    residual_norms, update_norms, round_keys = {}, {}, {}
    for i, layer in enumerate(layers):
        if lower is not None:
            lower.keep = layer - 1
        # one pass: this layer's keys and the values at z_layer after the layers edited so far
        keys, current = request_keys_and_values(model, adapter, layer, z_layer, prompts, len(requests), pad, lower=lower)
        initial = current if initial is None else initial
        residual = (targets - current) / (len(layers) - i)
        # what the MLP output must change by for the residual stream to change by ``residual``
        write = adapter.output_change(layer, keys, residual)
        delta = SOLVERS[config.solver].update(keys, write, layer=layer, config=config, preserved=preserved,
                                              soft=soft.grams[layer] if soft is not None else None)
        updates.apply(layer, delta)
        round_keys[layer] = keys
        if preserve_keys:
            preserved.state.add(layer, keys)
        residual_norms[layer] = round(float(residual.norm(dim=0).mean()), 4)
        update_norms[layer] = round(delta.norm(), 4)
    return _Sweep(initial, residual_norms, update_norms, round_keys)
