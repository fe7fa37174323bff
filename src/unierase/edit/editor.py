"""Phase II: one round of the Unlearning Edit over a batch of forget requests.

prompts → key positions → target values at the last edited layer → per layer (in order):
keys on the current model, residual spread over the remaining layers, closed-form update.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace

import torch

from ..models.adapters import MLPOutputAdapter
from ..prompts import has_chat_template
from ..refusals import load_refusals, refusal_for
from ..requests import ForgetRequest
from ..storage import UniEraseError
from ..token.training import answer_ids
from .keys import LowerBlocks, request_keys_and_values, token_keys
from .scope import compact_groups
from .preserved import PreservedKeys, SoftConstraint
from .prompts import EditPrompt, build_edit_prompts, entity_char_end, render_variants, subject_char_end
from .options import KEY_POSITIONS
from .solve import SOLVERS
from .values import PromptGroup, ValueConfig, compute_target_values, plain_prompt_group

log = logging.getLogger(__name__)


def default_layers(num_layers: int) -> list[int]:
    """Five consecutive early-middle layers starting at 1/8 of the depth (4–8 of 32 as in the
    official Llama-3.1-8B recipe; 4–8 of 30 for SmolLM2); fewer on very shallow models."""
    count = min(5, max(1, num_layers // 6))
    start = min(max(1, round(0.125 * num_layers)), num_layers - count)
    return list(range(start, start + count))


@dataclass
class EditConfig:
    """Hyper-parameters of the Unlearning Edit: neutral defaults; what was measured on a model is
    in its recipe (``unierase.edit.recipes``; ``edit_config_for`` applies it)."""

    layers: list[int] | None = None
    """MLP output projections to edit; ``None`` = ``default_layers(depth)``."""
    key_position: str = "auto"
    """Token whose MLP input is the key: 'subject', 'entity' (last capitalised name), 'distinct'
    (most of its key in the free subspace), 'question_end', 'last'; 'auto' = subject if given, else entity."""
    num_prefixes: int = 2
    """Fixed context prefixes averaged with the plain prompt for keys and values (as ROME/MEMIT)."""
    num_suffixes: int = 0
    """Fixed words after the question (``prompts.CONTEXT_SUFFIXES``) as more variants: the value must
    lead to the token from further away, as in a reworded question."""
    solver: str = "alphaedit"
    """'alphaedit' (null-space constrained, keeps the sequential state) or 'memit'."""
    null_space_threshold: float = 1e-2
    """Eigen-directions of C₀ below this fraction of its largest eigenvalue are free to edit."""
    question_key_weight: float = 1.0
    """Weight in C₀ of the entity keys of synthetic questions: the edit keys on what is specific to a request."""
    refusal_key_weight: float = 1.0
    """Weight in C₀ of the keys of ``question → [UNL] refusal``: the token's own continuation is left alone."""
    answer_key_weight: float = 1.0
    """Weight in C₀ of the keys of the model's own answers to generic questions: ordinary answering is left alone."""
    neutral_key_weight: float = 1.0
    """Weight of the round's soft constraint (neutral questions about each request's entity and its
    substitutes), so the edit does not fire on the entity alone or on the question's shape (0 = off)."""
    neutral_templates: int = 4
    """Relation-neutral questions per request in the soft constraint (``prompts.NEUTRAL_TEMPLATES``)."""
    substitute_entities: int = 4
    """Copies of each question with its entity replaced by another of the same kind, softly preserved (0 = off)."""
    substitute_answer_weight: float = 1.0
    """Weight of the substitutes' answer-position keys relative to ``neutral_key_weight``."""
    substitute_answer_tokens: int = 24
    """Answer tokens of each substitute question that are softly preserved too (0 = only its entity key)."""
    ridge: float = 0.1
    """λ of the closed form, as a fraction of the mean squared norm of the round's keys (more: each
    pass writes less and moves unrelated answers less)."""
    memit_weight: float = 1e4
    """λ' of the MEMIT option (weight of C₀ = E[k kᵀ])."""
    stats_tokens: int = 100_000
    """Corpus tokens for the preserved-key statistics (computed once per model, cached)."""
    max_passes: int = 12
    """Requests whose greedy first token is not yet the target get another pass, at most this many;
    each pass starts from the previous targets and preserves the previous keys."""
    group_value_questions: int | None = 8
    """An entity group's shared δ is optimised on at most this many of its pending questions, spread
    from the shortest to the longest; the others only receive it (None = all)."""
    group_value_rotation: bool = False
    """Each value step takes ``group_value_questions`` of the group's pending questions in turn, so
    the shared δ is fitted to all of them at the per-step cost of a few (fewer left for another pass)."""
    values: ValueConfig = field(default_factory=ValueConfig)
    """Target values of requests with their own target (fact scope)."""
    entity_values: ValueConfig = field(default_factory=ValueConfig)
    """Target values an entity group shares (one δ serves questions it was not optimised on)."""
    entity_substitute_answers: bool = False
    """Also preserve the substitute answers of entity-scope requests (costs a generation and a key pass)."""

    def __post_init__(self):
        # checked before any work: a bad value must not surface after the costly target values
        problems = [f"{name} must be {rule} (got {getattr(self, name)!r})" for name, rule, ok in (
            ("solver", " or ".join(map(repr, SOLVERS)), self.solver in SOLVERS),
            ("key_position", "one of " + ", ".join(KEY_POSITIONS), self.key_position in KEY_POSITIONS),
            ("null_space_threshold", "in (0, 1)", 0 < self.null_space_threshold < 1),
            ("ridge", "≥ 0", self.ridge >= 0),
            ("max_passes", "at least 1", self.max_passes >= 1),
            ("num_prefixes", "≥ 0", self.num_prefixes >= 0),
            ("num_suffixes", "≥ 0", self.num_suffixes >= 0),
            ("neutral_templates", "≥ 0", self.neutral_templates >= 0),
            ("substitute_entities", "≥ 0", self.substitute_entities >= 0),
            ("group_value_questions", "None or at least 1", self.group_value_questions is None or self.group_value_questions >= 1),
            ("layers", "None or distinct indices ≥ 0", self.layers is None or (
                len(set(self.layers)) == len(self.layers) and all(isinstance(l, int) and l >= 0 for l in self.layers))),
        ) if not ok]
        problems += [f"{name} must be ≥ 0 (got {getattr(self, name)!r})" for name in (
            "question_key_weight", "refusal_key_weight", "answer_key_weight", "neutral_key_weight", "substitute_answer_weight")
            if getattr(self, name) < 0]
        if problems:
            raise UniEraseError("EditConfig: " + "; ".join(problems))

    def resolved_layers(self, num_layers: int) -> list[int]:
        layers = sorted(self.layers) if self.layers else default_layers(num_layers)
        bad = [l for l in layers if not 0 <= l < num_layers]
        if bad:
            raise UniEraseError(f"layers {bad} out of range: the model has {num_layers} layers (0–{num_layers - 1})")
        return layers

    def to_dict(self) -> dict:
        return asdict(self)


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


def choose_key_chars(model, tokenizer, adapter: MLPOutputAdapter, requests: list[ForgetRequest], mode: str,
                     first_layer: int, basis: torch.Tensor | None) -> list[int | None]:
    """Character end (inside the question) of each request's key token; ``None`` = last prompt token."""
    if mode not in KEY_POSITIONS:
        raise UniEraseError(f"unknown key position {mode!r} (choose from {', '.join(KEY_POSITIONS)})")
    ends: list[int | None] = []
    pending: list[int] = []
    for i, r in enumerate(requests):
        if mode in ("auto", "subject") and r.subject:
            ends.append(subject_char_end(r.question, r.subject))
        elif mode == "subject":
            raise UniEraseError(f"request {i + 1} has no 'subject' but --key-position subject was asked for")
        elif mode == "last":
            ends.append(None)
        elif mode == "question_end":
            ends.append(len(r.question.rstrip()))
        elif mode == "entity" or (mode == "auto" and not r.subject):
            ends.append(entity_char_end(r.question))
        else:
            ends.append(None)
            pending.append(i)
    if pending:
        if basis is None:
            raise UniEraseError("key position 'distinct' needs the null-space basis of the preserved keys")
        for i in pending:
            ends[i] = _most_distinct_token(model, tokenizer, adapter, requests[i].question, first_layer, basis)
    return ends


def _most_distinct_token(model, tokenizer, adapter, question: str, layer: int, basis: torch.Tensor) -> int:
    """The question token whose key has the largest share ‖Ûᵀ k‖² / ‖k‖² in the free subspace.

    The first word is skipped (its token depends on what precedes the question).
    """
    ids, offsets, q_start = render_variants(tokenizer, question, num_prefixes=0)[0]
    keys = token_keys(model, adapter, layer, [EditPrompt(0, 0, ids, len(ids) - 1, (0, len(ids)))], tokenizer.pad_token_id)[0]
    u = basis.to(torch.float32)
    best, best_score = None, -1.0
    first_word_end = q_start + (question.find(" ") if " " in question else len(question))
    for t, (s, e) in enumerate(offsets):
        if s < first_word_end or e > q_start + len(question) or e <= s:
            continue
        k = keys[t]
        score = float((u.T @ k).norm() ** 2 / k.norm().clamp(min=1e-12) ** 2)
        if score > best_score:
            best, best_score = e - q_start, score
    return best if best is not None else len(question)


@dataclass
class PassesResult:
    """What ``run_edit_passes`` did: one record per pass, the requests never reached, the last pass."""

    passes: list[dict]
    not_reached: list[ForgetRequest]
    key_tokens: list[str]
    last: RoundReport
    not_reached_indices: list[int] = field(default_factory=list)
    """Indices (into the requests given) of ``not_reached``."""


def run_edit_passes(model, tokenizer, adapter: MLPOutputAdapter, requests: list[ForgetRequest], target_id: int,
                    config: EditConfig, preserved: PreservedKeys, *, progress: bool = True,
                    answer_ids: list[list[int]] | None = None,
                    groups: list[int] | None = None, entity_scope: list[str | None] | None = None) -> PassesResult:
    """Edit rounds until every request's greedy first answer token is ``target_id`` (at most
    ``config.max_passes``); each further pass covers only the requests not reached yet.
    ``preserved``: what the updates leave alone (``preserved.build_preserved_keys``); its state
    ends up holding every pass's keys and the round's soft constraint. ``answer_ids``: the model's
    greedy answers to the requests, if the caller has them (``preserved.soft_constraint_keys``).
    ``groups`` and ``entity_scope``: the shared targets and the entity-scope requests
    (``scope.resolve_scope``).
    """
    preserved.begin_round(model, tokenizer, adapter, requests, config, answer_ids, entity_scope)
    pending = list(range(len(requests)))
    targets: list[torch.Tensor | None] = [None] * len(requests)
    converged = [False] * len(requests)  # target value reached in an earlier pass
    passes, key_tokens, report, carried = [], [], None, None
    for _ in range(config.max_passes):
        # a further pass starts each pending request's δ at its previous target and keeps the targets
        # that converged (the layers above the edit are unchanged, so they still serve). A request's
        # keys join the preserved term once it is reached: preserving a pending request's own earlier
        # keys would make each of its further updates fight the last one (each pass writing less)
        report = run_edit_round(model, tokenizer, adapter, [requests[i] for i in pending], target_id, config, preserved,
                                progress=progress, preserve_keys=False,
                                start_targets=[targets[i] for i in pending],
                                keep_targets=[converged[i] for i in pending],
                                plain_group=carried, groups=compact_groups([groups[i] for i in pending]) if groups else None,
                                optimise=_steering([requests[i] for i in pending], [groups[i] for i in pending],
                                                   config.group_value_questions)
                                if groups and not config.group_value_rotation else None)
        key_tokens = key_tokens or report.key_tokens
        for j, i in enumerate(pending):
            targets[i] = report.targets[:, j]
            converged[i] = report.values["converged"][j]
        firsts = report.after.first_tokens()  # greedy first answer token on the edited model
        if config.values.greedy_continuation:  # …and the refusal after it, greedy, on the edited model
            whole = report.after.tail_greedy().tolist()
            for j, i in enumerate(pending):
                if firsts[j] == target_id and not whole[j]:
                    firsts[j], converged[i] = -1, False  # another pass, its δ optimised on the edited model
        reached = sum(1 for f in firsts if f == target_id)
        passes.append({"requests": len(pending), "reached": reached, "residual_left": report.residual_left,
                       "timings_s": report.timings_s, "values": report.values})
        still = [j for j, f in enumerate(firsts) if f != target_id]
        _preserve_columns(preserved, report.keys, [j for j, f in enumerate(firsts) if f == target_id])
        carried = report.after.subset(still) if still else None
        pending = [pending[j] for j in still]
        preserved.keep_pending(pending)
        if not pending:
            break
    if pending:  # never reached: later rounds keep what the last pass wrote for them
        _preserve_columns(preserved, report.keys, still)
    preserved.end_round(config)
    return PassesResult(passes, [requests[i] for i in pending], key_tokens, report, list(pending))


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


def _shared_rows(groups: list[int] | None, num_requests: int) -> list[bool]:
    """Per request: whether its target is shared with another request (an entity group)."""
    if not groups:
        return [False] * num_requests
    sizes = Counter(groups)
    return [sizes[g] > 1 for g in groups]


def _target_values(model, adapter, z_layer, prompts: list[EditPrompt], num_requests: int, target_id: int, pad: int,
                   config: EditConfig, progress: bool, *, continuations, start_targets, plain_group, keep_targets,
                   groups, optimise, shared: list[bool] | None = None) -> tuple[torch.Tensor, dict]:
    """``compute_target_values`` with ``config.values`` for the requests with their own target and
    with ``config.entity_values`` for the targets an entity group shares (``shared``, from
    ``_shared_rows``, computed here when not given); (Z, report as a dict)."""
    shared = _shared_rows(groups, num_requests) if shared is None else shared
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
                   preserve_keys: bool = True) -> RoundReport:
    """Edit ``model`` in place so each request's answer starts with ``target_id``.

    ``preserved`` holds what the update must keep (its state: K_p K_pᵀ of earlier edits; this round's
    keys are added to it; its round's soft constraint, measured here when it has none);
    ``start_targets`` warm-starts the target values and ``keep_targets`` keeps some of them as they
    are (``compute_target_values``);
    ``plain_group``: the previous pass's ``RoundReport.after`` restricted to these requests;
    ``groups``: requests sharing one target value (``compute_target_values``);
    ``preserve_keys``: add this round's keys to ``preserved.state`` (``run_edit_passes`` adds them
    itself, once each request is reached).
    """
    timings: dict[str, float] = {}
    layers = config.resolved_layers(adapter.num_layers)
    pad = tokenizer.pad_token_id

    null_dims = {layer: basis.shape[1] for layer, basis in preserved.bases.items()}
    started = time.perf_counter()
    ends = choose_key_chars(model, tokenizer, adapter, requests, config.key_position, layers[0], preserved.basis(layers[0]))
    shared = _shared_rows(groups, len(requests))
    prompts = _round_prompts(tokenizer, requests, ends, shared, config)
    key_tokens = [tokenizer.decode([p.input_ids[p.key_index]]) for p in prompts if p.variant == 0]
    timings["key_positions"] = time.perf_counter() - started

    started = time.perf_counter()
    z_layer = layers[-1]
    refusals, chat = load_refusals(), has_chat_template(tokenizer)
    continuations = [answer_ids(tokenizer, refusal_for(r.question, refusals), target_id, chat)[1:] for r in requests]
    targets, value_report = _target_values(model, adapter, z_layer, prompts, len(requests), target_id, pad, config,
                                           progress, continuations=continuations, start_targets=start_targets,
                                           plain_group=plain_group, keep_targets=keep_targets, groups=groups,
                                           optimise=optimise, shared=shared)
    timings["target_values"] = time.perf_counter() - started

    started = time.perf_counter()
    sweep = _solve_layers(model, tokenizer, adapter, requests, prompts, targets, config, preserved, layers=layers,
                          preserve_keys=preserve_keys)
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
                  preserve_keys: bool) -> _Sweep:
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
        delta = SOLVERS[config.solver].update(keys, residual, layer=layer, config=config, preserved=preserved,
                                              soft=soft.grams[layer] if soft is not None else None)
        adapter.add_to_weight(layer, delta)
        round_keys[layer] = keys
        if preserve_keys:
            preserved.state.add(layer, keys)
        residual_norms[layer] = round(float(residual.norm(dim=0).mean()), 4)
        update_norms[layer] = round(float(delta.norm()), 4)
    return _Sweep(initial, residual_norms, update_norms, round_keys)
