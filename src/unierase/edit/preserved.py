"""The preserved-key constraint: what every update of a round must leave alone, in one object.

``PreservedKeys`` owns C₀ per edited layer (corpus, question, refusal, own-answer and invented-name
keys, weighted by the ``EditConfig``), the basis Û of its null space, the sequential state K_p K_pᵀ of earlier
edits, and the round's soft constraint (the neutral and substitute questions' keys).
``build_preserved_keys`` assembles it in one place and caches C₀ and Û as one artefact.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from ..cache import Cache, code_digest, content_key
from ..generation import generate_answer_ids
from ..models.adapters import MLPOutputAdapter
from ..requests import ForgetRequest
from .keys import answer_position_keys, request_keys_at
from .prompts import neutral_questions, plain_prompts, substitute_answers
from .solve import SOLVERS
from ..record.edit_state import EditState
from .stats import linalg_device, null_space_basis

log = logging.getLogger(__name__)

PRESERVED_KIND = "preserved"


@dataclass
class PreservedKeys:
    layers: list[int]
    covariances: dict[int, torch.Tensor]
    """C₀ per layer (m × m, fp64), weighted as the config asks (``KeyStatistics.covariance``); empty
    in a round whose solver needs only the null space (``needs_covariances``)."""
    bases: dict[int, torch.Tensor]
    """Û (m × r) per layer: eigen-directions of C₀ below ``null_space_threshold`` × its largest
    eigenvalue; empty when neither the solver nor the key choice needs them."""
    state: EditState = field(default_factory=EditState)
    """K_p K_pᵀ of earlier edits (and soft constraints); this round's keys are added to it."""
    statistics: dict = field(default_factory=dict)
    """What C₀ was estimated from (corpus name and token count), for the manifest."""
    soft: "SoftConstraint | None" = None
    """The current round's soft constraint (``begin_round``)."""

    @classmethod
    def from_statistics(cls, stats, layers: list[int], config, state: EditState | None = None, *,
                        devices: dict[int, torch.device] | None = None, free_moments: bool = False) -> "PreservedKeys":
        """From key statistics (``stats.KeyStatistics``, with refusal moments when the config weighs them).
        C₀ and its eigendecomposition are built layer by layer on ``devices[l]`` (the edited weight's:
        ``stats.linalg_device``; the CPU without it); ``free_moments`` frees each layer's moment sums
        once its C₀ is built, so they and every C₀ are never all held at once."""
        record = {"corpus": stats.corpus, "tokens": stats.count}
        covariances, bases = {}, {}
        weights = (config.question_key_weight, config.refusal_key_weight, config.answer_key_weight,
                   config.rare_name_key_weight)
        for l in layers:
            device = linalg_device(devices[l]) if devices else torch.device("cpu")
            covariances[l] = stats.covariance(l, *weights).to(device=device, dtype=torch.float64).contiguous()
            if needs_bases(config):
                scaled = covariances[l] if config.null_space_scale == "joint" else \
                    stats.covariance(l, *weights, per_family=True).to(device=device, dtype=torch.float64)
                bases[l] = null_space_basis(scaled, relative_threshold=config.null_space_threshold)
            if free_moments:
                stats.drop(l)
        return cls(list(layers), covariances, bases, state if state is not None else EditState(), record)

    def basis(self, layer: int) -> torch.Tensor | None:
        return self.bases.get(layer)

    def covariance(self, layer: int) -> torch.Tensor:
        return self.covariances[layer]

    def soft_gram(self, layer: int) -> torch.Tensor | None:
        return self.soft.grams[layer] if self.soft is not None else None

    def begin_round(self, model, tokenizer, adapter: MLPOutputAdapter, requests: list[ForgetRequest], config,
                    answer_ids=None, entity_scope=None) -> None:
        """Measure the round's soft constraint on the model before its first pass (a soft constraint:
        the small change the passes make to its keys does not matter)."""
        self.soft = SoftConstraint.measure(model, tokenizer, adapter, requests, self.layers, config, self.bases,
                                           answer_ids, entity_scope)

    def keep_pending(self, indices: list[int]) -> None:
        if self.soft is not None:
            self.soft.keep(indices)

    def end_round(self, config) -> None:
        """Later rounds keep preserving what this round softly preserved (all of it, or its
        principal directions: ``EditConfig.soft_state_rows``)."""
        if self.soft is not None:
            requests = len(self.soft.keys or [])
            for layer, keys in (_stack_soft_keys(self.soft.keys) or {}).items():
                keys = keys * config.neutral_key_weight ** 0.5
                if config.soft_state_rows is not None:
                    keys = principal_keys(keys, math.ceil(config.soft_state_rows * requests))
                if keys is not None:
                    self.state.add(layer, keys)
        self.soft = None


def needs_bases(config) -> bool:
    return SOLVERS[config.solver].needs_null_space or config.key_position == "distinct"


def needs_covariances(config) -> bool:
    """Whether the solve reads C₀ itself (MEMIT); AlphaEdit needs only its null space Û."""
    return not SOLVERS[config.solver].needs_null_space


def build_preserved_keys(model, tokenizer, adapter: MLPOutputAdapter, layers: list[int], config, *, fingerprint: str,
                         token_id: int, token_key: str | None, state: EditState, cache_dir=None, own_answers=None,
                         progress: bool = True) -> PreservedKeys:
    """The preserved keys of ``model`` at ``layers``: C₀ and Û from the cache when this model, token,
    layers and weighting were seen before; otherwise from the key statistics (themselves cached)
    and the token's refusal keys."""
    from . import corpus, preserved, stats as stats_module

    cache = Cache(cache_dir)
    weights = {k: getattr(config, k) for k in ("question_key_weight", "refusal_key_weight", "answer_key_weight",
                                              "rare_name_key_weight", "null_space_threshold", "null_space_scale",
                                              "stats_tokens")}
    key = content_key(fingerprint, token_key, layers, weights, needs_bases(config),
                      code_digest(stats_module, corpus, preserved)) if token_key else None
    devices = {l: linalg_device(adapter.mlp_output(l).weight.device) for l in layers}
    cached = _load_preserved(cache, key, layers, devices, needs_covariances(config)) if key else None
    if cached is not None:
        log.info("preserved keys (C₀ and null space) loaded from cache %s", cache.entry(PRESERVED_KIND, key))
        return PreservedKeys(list(layers), *cached[:2], state, cached[2])
    stats, _ = stats_module.get_key_statistics(model, tokenizer, adapter, layers, fingerprint=fingerprint,
                                               cache_dir=cache.root, num_tokens=config.stats_tokens,
                                               progress=progress, own_answers=own_answers)
    if config.refusal_key_weight:
        stats.refusal_moments, stats.refusal_count = stats_module.accumulate_refusal_key_moments(
            model, tokenizer, adapter, layers, token_id, refusal=config.refusal)
    if config.rare_name_key_weight:
        stats.rare_name_moments, stats.rare_name_count = stats_module.accumulate_rare_name_key_moments(
            model, tokenizer, adapter, layers, stats_module.RARE_NAMES)
    result = PreservedKeys.from_statistics(stats, layers, config, state, devices=devices, free_moments=True)
    if key:
        for l in layers:  # one layer's C₀ and Û on the host at a time
            tensors = {"c": result.covariances[l].cpu(), **({"u": result.bases[l].cpu()} if l in result.bases else {})}
            cache.save_tensors(PRESERVED_KIND, key, tensors, f"layer{l}.safetensors")
            del tensors
        cache.save_json(PRESERVED_KIND, key, result.statistics)
    if not needs_covariances(config):  # cached for a later MEMIT round; this one needs only Û
        result.covariances = {}
    return result


def _load_preserved(cache: Cache, key: str, layers: list[int], devices: dict[int, torch.device], covariances: bool):
    """(C₀ per layer — with ``covariances`` only, else empty —, Û per layer, the statistics record)
    from the cache, each on its layer's device; ``None`` when a layer or the record is missing."""
    info = cache.load_json(PRESERVED_KIND, key)
    if info is None:
        return None
    found, bases = {}, {}
    for l in layers:
        data = cache.load_tensors(PRESERVED_KIND, key, f"layer{l}.safetensors")
        if data is None:
            return None
        if covariances:
            found[l] = data["c"].to(devices[l])
        if "u" in data:
            bases[l] = data["u"].to(devices[l])
    return found, bases, info


def soft_constraint_keys(model, tokenizer, adapter: MLPOutputAdapter, requests: list[ForgetRequest], layers: list[int],
                         config, answer_ids: list[list[int]] | None = None,
                         entity_scope: list[str | None] | None = None) -> list[dict[int, torch.Tensor]] | None:
    """Per request: layer → keys (m × n) of its ``neutral_prompts`` (and, with
    ``config.substitute_answer_tokens``, of every answer position of its ``substitute_answers``),
    from one pass on the current model; ``None`` when the config has no soft constraint (weight 0,
    or keys not on an entity). ``answer_ids``: the current model's greedy answers to the requests
    (``generation.generate_answer_ids``) when the caller has them; generated here otherwise.
    ``entity_scope[r]``: request r's ``ScopedRound.entity_kind`` ('person', 'entity' or ``None``
    for a fact): questions about an entity-scope request's entity are targets, so its
    relation-neutral questions are not kept (its substitutes, the same question about other
    entities, are: other people for a person the corpus does not list)."""
    if not config.neutral_key_weight or config.key_position not in ("auto", "entity", "subject"):
        return None
    entity = entity_scope or [None] * len(requests)
    people = [e == "person" for e in entity]
    questions = neutral_questions(requests, config.neutral_templates, config.substitute_entities, people)
    questions = [q[config.neutral_templates:] if e else q for q, e in zip(questions, entity)]
    if not any(questions):
        return None
    soft = plain_prompts(tokenizer, questions)
    keys = request_keys_at(model, adapter, layers, soft, len(soft), tokenizer.pad_token_id)
    per_request, start = [], 0
    for n in map(len, questions):
        per_request.append({layer: k[:, start:start + n] for layer, k in keys.items()})
        start += n
    with_answers = [r for r, e in enumerate(entity) if not e or config.entity_substitute_answers]
    if config.substitute_answer_tokens and config.substitute_entities and with_answers:
        chosen = [requests[r] for r in with_answers]
        if answer_ids is None or len(answer_ids) != len(requests):
            ids = generate_answer_ids(model, tokenizer, [r.question for r in chosen],
                                      max_new_tokens=config.substitute_answer_tokens)
        else:
            ids = [answer_ids[r] for r in with_answers]
        answers = [tokenizer.decode(a[:config.substitute_answer_tokens], skip_special_tokens=True) for a in ids]
        pairs = substitute_answers(tokenizer, chosen, answers, config.substitute_entities, [people[r] for r in with_answers])
        flat = [pair for request_pairs in pairs for pair in request_pairs]
        positions = answer_position_keys(model, adapter, layers, flat, tokenizer.pad_token_id)
        scale = config.substitute_answer_weight ** 0.5  # relative: all soft keys carry neutral_key_weight too
        i = 0
        for r, request_pairs in zip(with_answers, pairs):
            extra = positions[i:i + len(request_pairs)]
            i += len(request_pairs)
            for layer in layers:
                per_request[r][layer] = torch.cat([per_request[r][layer]] + [scale * e[layer].T for e in extra], dim=1)
    return per_request


def principal_keys(keys: torch.Tensor, count: int) -> torch.Tensor | None:
    """``count`` columns P (m × count) with P Pᵀ the best rank-``count`` approximation of K Kᵀ
    (``keys`` K: m × n, one key per column): the left singular vectors scaled by their singular
    values. ``keys`` itself when it has no more columns than that; ``None`` for none.

    From the eigenvectors of the smaller Gram matrix (KᵀK or KKᵀ) rather than an SVD of K: the
    same directions at a third of the time, and only the leading ones, which are well separated."""
    if count <= 0:
        return None
    m, n = keys.shape
    if count >= n:
        return keys
    k = keys.to(torch.float64)
    if n <= m:  # K V = U S for the top eigenvectors V of KᵀK
        _, v = torch.linalg.eigh(k.T @ k)
        return (k @ v[:, -count:].flip(1)).to(keys.dtype)
    eigenvalues, u = torch.linalg.eigh(k @ k.T)
    return (u[:, -count:].flip(1) * eigenvalues[-count:].flip(0).clamp(min=0).sqrt()).to(keys.dtype)


def _stack_soft_keys(per_request: list[dict[int, torch.Tensor]] | None) -> dict[int, torch.Tensor] | None:
    if not per_request:
        return None
    return {layer: torch.cat([keys[layer] for keys in per_request], dim=1) for layer in per_request[0]}


class SoftConstraint:
    """The round's softly preserved keys (``soft_constraint_keys``) as the solve adds them: per layer
    ``neutral_key_weight`` × Σ k kᵀ over the requests still in the pass, in the solver's coordinates
    (Ûᵀ k for AlphaEdit, k for MEMIT).

    Projected and summed once per round; when requests leave (``keep``), only their own columns
    are subtracted, instead of every pass projecting all soft keys again (which cost more than the
    rest of the solve)."""

    def __init__(self, per_request: list[dict[int, torch.Tensor]], weight: float,
                 bases: dict[int, torch.Tensor] | None = None):
        self.keys = per_request  # as measured (m × n per layer), for the sequential state
        self.columns = [{layer: (bases[layer].double().T @ k.to(bases[layer].device, torch.float64) if bases
                                 else k.double()) * weight ** 0.5
                         for layer, k in keys.items()} for keys in per_request]
        self.active = list(range(len(per_request)))
        self.grams = {}
        for layer in (per_request[0] if per_request else {}):
            stacked = torch.cat([c[layer] for c in self.columns], dim=1)
            self.grams[layer] = stacked @ stacked.T

    @classmethod
    def measure(cls, model, tokenizer, adapter: MLPOutputAdapter, requests: list[ForgetRequest], layers: list[int],
                config, bases: dict[int, torch.Tensor],
                answer_ids: list[list[int]] | None = None,
                entity_scope: list[str | None] | None = None) -> "SoftConstraint | None":
        """The soft constraint of ``requests`` on the current model (``soft_constraint_keys``); ``None``
        when the config has none."""
        per_request = soft_constraint_keys(model, tokenizer, adapter, requests, layers, config, answer_ids, entity_scope)
        if not per_request:
            return None
        return cls(per_request, config.neutral_key_weight, bases if SOLVERS[config.solver].needs_null_space else None)

    def keep(self, indices: list[int]) -> None:
        """Restrict the sums to the requests ``indices``: those that left are subtracted, and those
        back (a request a later pass undid) added again."""
        leaving = sorted(set(self.active) - set(indices))
        joining = sorted(set(indices) - set(self.active))
        for sign, moved in ((-1, leaving), (1, joining)):
            if moved:
                for layer in self.grams:
                    stacked = torch.cat([self.columns[i][layer] for i in moved], dim=1)
                    self.grams[layer] = self.grams[layer] + sign * (stacked @ stacked.T)
        self.active = list(indices)
