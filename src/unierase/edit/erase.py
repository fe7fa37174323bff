"""UniErase as a method: requests + model → unlearning token → preserved keys → edit passes →
checkpoint, manifest and ledger entry.

The stages, each in its own module: ``scope`` (which requests share a target), ``prompts`` (every
question the edit runs), ``keys``, ``values`` (the target values), ``preserved`` (C₀, its null
space, the sequential state, the round's soft constraint), ``solve`` (closed forms by name) and
``editor`` (the passes that run them); ``record.rounds`` writes the result. ``erase`` is what
``edit/__init__.py`` registers as the method ``unierase``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._version import __version__
from ..generation import OwnAnswers
from ..measure import peak_memory_mb
from ..models.adapters import find_mlp_output
from ..models.loading import model_fingerprint
from ..prompts import PINNED_DATE, PLAIN_TEMPLATE, has_chat_template
from ..record.edit_state import row_dtype_for
from ..record.manifest import Manifest, base_model_info, runtime_info
from ..record.rounds import (embedding_names, load_checked_model as load_model, load_input, neighbour_questions, probe,
                             save_round, start_round)
from ..registry import RunContext
from ..refusals import check_refusal
from ..requests import ForgetRequest
from ..storage import UniEraseError, default_cache_dir, locked_run
from ..token.cache import ensure_unlearning_token
from ..token.placement import keep_to_answer_start, lead_into_refusal
from ..token.questions import training_questions
from ..token.training import UnlearningTokenConfig, answer_ids as refusal_ids
from .config import EditConfig
from .editor import STALL_PASSES, run_edit_passes
from .keys import choose_key_chars
from .options import EraseOptions
from .prompts import neutral_questions
from .preserved import build_preserved_keys
from .recipes import edit_config_for, token_with_settings, with_settings
from .scope import resolve_with_evidence
from .stats import ANSWER_KEY_TOKENS

log = logging.getLogger(__name__)


@dataclass
class ForgetResult:
    """What ``forget`` did; ``manifest`` is what was written next to the checkpoint."""

    out: Path | None
    manifest: dict
    model: object = field(repr=False, default=None)
    tokenizer: object = field(repr=False, default=None)

    def summary(self) -> str:
        if "dry_run" in self.manifest:
            return _plan_text(self.manifest["dry_run"])
        last = self.manifest["rounds"][-1]
        t = last["timings_s"]
        return (f"erased {len(last['requests'])} request(s) in round {last['round']} ({last['mode']}); layers {last['layers']}; "
                f"edit {t.get('edit', 0):.1f} s, token {t.get('token', 0):.1f} s, statistics {t.get('statistics', 0):.1f} s; "
                f"parameter fraction {self.manifest['parameter_fraction']:.4%}"
                + (f"; {len(last['not_reached'])} request(s) not reached yet (manifest: not_reached)" if last.get("not_reached") else "")
                + (f"; saved to {self.out}" if self.out else ""))


def _plan_text(plan: dict) -> str:
    """``--dry-run``'s plan as lines: each entity, each fact, what entity scope could not attribute."""
    lines = ["dry run: nothing was trained, edited or written"]
    for e in plan["entities"]:
        lines.append(f"entity {e['entity']!r} ({'person' if e['person'] else 'entity'}, from {e['from']}): "
                     f"{len(e['requests'])} request(s), {len(e['added'])} neutral question(s) added")
        lines += [f"  - {r['question']}   [key: {r['key']}]" for r in e["requests"] + e["added"]]
    if plan["facts"]:
        lines.append(f"fact scope: {len(plan['facts'])} request(s)")
        lines += [f"  - {r['question']}   [key: {r['key']}]" for r in plan["facts"]]
    if plan["unattributed"]:
        lines.append(f"not attributed to any entity, kept as facts: {len(plan['unattributed'])} request(s)")
        lines += [f"  - {r['question']}   [key: {r['key']}]" for r in plan["unattributed"]]
    return "\n".join(lines)


EDIT_TOKEN_RESERVE = 128
"""Context left beside each request's prompt for the edit's prefixes and its target continuation."""
EVIDENCE_TOKENS = 48
"""Greedy tokens of the model's own answer that may name the entity a request describes."""


def erase(reqs: list[ForgetRequest], source: str, out, context: RunContext, options: EraseOptions) -> ForgetResult:
    """One UniErase round (``api.forget`` with ``method='unierase'``), reading top-down: the model and
    its records → the round's settings → the unlearning token → the preserved keys → the edit
    passes → where the token may be generated → the manifest → the erasure-time check and the atomic save."""
    if options.dry_run:  # api.forget has checked the options against the requests
        return _dry_run(reqs, source, context, options)
    with locked_run(out, [context.model_dir]):
        torch.manual_seed(context.seed)
        run = _load_round(reqs, source, out, context, options)
        _settle_settings(run)
        _check_plan(run)
        _add_unlearning_token(run)
        _build_preserved_keys(run)
        _edit(run)
        _place_token(run)
        manifest = _manifest(run)
        out_path = _check_and_save(run, out, manifest) if out is not None else None
        return ForgetResult(out_path, manifest, run.model, run.tokenizer)


@dataclass
class _Round:
    """What the steps of one round hand each other."""

    reqs: list[ForgetRequest]
    source: str
    out: object
    context: RunContext
    options: EraseOptions
    model: object
    tokenizer: object
    source_input: object
    previous: dict
    base_history: dict | None
    mode: str
    cache_dir: Path
    started: float
    timings: dict[str, float] = field(default_factory=dict)
    config: EditConfig | None = None
    hyperparameters: dict = field(default_factory=dict)
    """``config.to_dict()``, taken once the settings are settled (the manifest and the ledger record it)."""
    recipe: object = None
    adapter: object = None
    layers: list[int] = field(default_factory=list)
    token_config: UnlearningTokenConfig | None = None
    start: object = None
    fingerprint: str = ""
    own_answers: object = None
    substitutes: list[str] = field(default_factory=list)
    token: object = None
    preserved: object = None
    scoped: object = None
    result: object = None
    plan: dict = field(default_factory=dict)
    """The round's planned peaks (``plan.py``), for the manifest."""
    header: list[int] | None = None
    """The answer header after which alone the token may be generated (``token.placement``; None: anywhere)."""

    def timed(self, name: str, started: float) -> None:
        self.timings[name] = time.perf_counter() - started


def _load_round(reqs, source, out, context: RunContext, options: EraseOptions) -> _Round:
    """The model (loaded unless given in memory) and what its directory records of earlier rounds."""
    from ..generation import check_lengths

    source_input = load_input(context.model_dir)
    started_all = started = time.perf_counter()
    cache_dir = Path(context.cache_dir) if context.cache_dir else default_cache_dir()
    model, tokenizer = context.model, context.tokenizer
    if context.model_dir is not None or context.hub_id is not None:
        model, tokenizer = load_model(context.model_dir or context.hub_id, cache_dir=cache_dir,
                                      device_map=context.device_map, dtype=context.dtype)
    elif tokenizer is None:
        raise UniEraseError("pass the tokenizer together with an in-memory model")
    check_lengths(model, tokenizer, [r.question for r in reqs], EDIT_TOKEN_RESERVE, what="request")
    previous = source_input.manifest or {}
    base_history = None
    if previous.get("method") != "unierase":
        # a plain, fine-tuned or baseline-unlearned checkpoint: UniErase starts from it as its base;
        # what made it stays in the manifest (and the ledger continues)
        base_history, previous = (previous or None), {}
    run = _Round(reqs, source, out, context, options, model, tokenizer, source_input, previous, base_history,
                 options.mode or ("sequential" if previous else "batch"), cache_dir, started_all)
    run.timed("load", started)
    return run


def _settle_settings(run: _Round) -> None:
    """The edit's settings (recipe, options, ``--set``), its layers, and what the round may change."""
    options = run.options
    token_config = options.token_config or UnlearningTokenConfig(seed=run.context.seed)
    run.config, run.recipe = _resolve_config(run.model, options, run.cache_dir)
    _keep_earlier_refusal(run)
    # the token leads into the round's refusal, whichever set it (option, recipe, --set, an earlier round)
    run.token_config = dataclasses.replace(token_with_settings(token_config, options.settings), refusal=run.config.refusal)
    check_refusal(run.config.refusal, [r.answer for r in run.reqs])  # one a recipe or --set gave, too
    run.adapter = find_mlp_output(run.model)
    _check_token_room(run.model)
    run.layers = run.config.resolved_layers(run.adapter.num_layers)
    run.hyperparameters = run.config.to_dict()
    previous_layers = run.previous.get("layers")
    if run.previous and previous_layers and previous_layers != run.layers:
        raise UniEraseError(f"{run.context.model_dir} was edited at layers {previous_layers}; a sequential round must "
                            "use the same layers")
    state = run.source_input.state
    state.row_dtype = row_dtype_for(run.adapter.mlp_output(run.layers[0]).weight.dtype)
    state.validate(run.layers, run.adapter.key_dim(run.layers[0]),
                   source=f"{run.context.model_dir}/unierase_state.safetensors")
    # the tensors the round may change: the edited projections and the embeddings of the token
    changes = [f"{run.adapter.module_name(layer)}.weight" for layer in run.layers] + embedding_names(run.model)
    _check_in_memory(run.model, changes)
    # the neighbours the round must leave alone: the requests' substitute-entity questions
    run.substitutes = [q for per in neutral_questions(run.reqs, 0, 2) for q, _ in per]
    run.start = (start_round(run.model, state, changes=changes, tokenizer=run.tokenizer, neighbours=run.substitutes)
                 if run.out is not None else None)
    run.fingerprint = run.previous.get("base_model", {}).get("fingerprint") or model_fingerprint(run.model)
    # the model's own answers to the generic questions, generated at most once for the token and the statistics
    run.own_answers = OwnAnswers(run.model, run.tokenizer, training_questions(), ANSWER_KEY_TOKENS,
                                 suppress=(run.token_config.token,))


def _check_in_memory(model, names: list[str]) -> None:
    """The weights a round changes must be in memory: a device map may offload other layers (to the
    CPU or disk, read in as they run), not these."""
    offloaded = [name for name, param in model.named_parameters() if name in names and param.is_meta]
    if offloaded:
        raise UniEraseError(f"the device map offloads weights this round changes ({', '.join(offloaded[:3])}); "
                            "map the edited layers and the embeddings to cpu or a GPU")


def _keep_earlier_refusal(run: _Round) -> None:
    """A later round answers with the refusal the checkpoint's token was trained into (one chosen
    explicitly that differs is an error: the token cannot lead into two sentences)."""
    rounds = run.previous.get("rounds") or []
    if not rounds:
        return
    earlier = rounds[-1].get("hyperparameters", {}).get("refusal")
    if run.options.refusal is not None and run.options.refusal != earlier:
        raise UniEraseError(f"{run.context.model_dir}: its unlearning token leads into "
                            f"{earlier if earlier else 'the bundled refusals'!r}; a later round cannot answer with "
                            f"{run.options.refusal!r} (leave --refusal out, or start from the base model)")
    run.config = dataclasses.replace(run.config, refusal=earlier)


def _check_plan(run: _Round) -> None:
    """The round's plan (``plan.py``): refused before any work when a phase will not fit the devices
    it runs on (unless ``force``); its peaks go into the manifest."""
    from .plan import Shape, available, check, fitting_micro_batch, plan_round
    from .stats import StatisticsCache
    from .corpus import CORPUS_ID

    weight = next(run.model.parameters())
    device = "cpu" if weight.device.type == "cpu" else str(weight.device)
    folder = StatisticsCache(run.cache_dir).folder(run.fingerprint, CORPUS_ID, run.config.stats_tokens)
    cached = all((folder / f"layer{layer}.safetensors").is_file() for layer in run.layers)
    try:
        shape = Shape.of_model(run.model)
    except Exception as err:  # an architecture the plan cannot read: the round runs unplanned, and says so
        log.warning("no plan for this model (%s: %s); the round is not checked against free memory",
                    type(err).__name__, err)
        return
    free = available(device, run.out)
    if len({p.device for p in run.model.parameters()}) > 1:  # spread by a device map: one device's free memory says little
        free.pop("device_gib", None)
        log.info("plan: the model is spread over several devices; their memory is not checked")

    def plan_for(config):
        return plan_round(shape, dtype=weight.dtype, device=device, requests=len(run.reqs), config=config,
                          statistics_cached=cached)

    plan = plan_for(run.config)
    room = free.get("device_gib" if device != "cpu" else "host_gib")
    if run.config.values.micro_batch is None and room is not None:
        size = fitting_micro_batch(lambda n: plan_for(_with_micro_batch(run.config, n)), len(run.reqs),
                                   room + plan.phases[0].device_gib)
        if size is not None:  # the value optimisation in micro-batches that fit, rather than a refusal
            log.info("plan: the value optimisation runs in micro-batches of %d requests to fit %.1f GiB", size, room)
            run.config = _with_micro_batch(run.config, size)
            run.hyperparameters = run.config.to_dict()
            plan = plan_for(run.config)
    run.plan = {"peak_device_gib": plan.peak("device_gib").device_gib, "peak_host_gib": plan.peak("host_gib").host_gib,
                "disk_gib": round(sum(p.disk_gib for p in plan.phases), 2),
                "state_and_revert_gib": plan.state_and_revert_gib}
    log.info("plan: %s", run.plan)
    resident = plan.phases[0].device_gib  # the weights, loaded already
    try:
        check(plan, free, resident_gib=resident)
    except UniEraseError as err:
        if not run.context.force:
            raise UniEraseError(f"{err}; --force runs anyway") from None
        log.warning("%s; running anyway (--force)", err)


def _with_micro_batch(config: EditConfig, size: int | None) -> EditConfig:
    return dataclasses.replace(config, values=dataclasses.replace(config.values, micro_batch=size),
                               entity_values=dataclasses.replace(config.entity_values, micro_batch=size))


def _check_token_room(model) -> None:
    """The unlearning token needs an input embedding matrix to grow by a row (one-line error otherwise)."""
    embeddings = model.get_input_embeddings()
    if embeddings is None or getattr(embeddings, "weight", None) is None or embeddings.weight.dim() != 2:
        raise UniEraseError(f"unsupported model {type(model).__name__}: it has no input embedding matrix to add the "
                            "unlearning token to (get_input_embeddings() gives none)")


def _add_unlearning_token(run: _Round) -> None:
    started = time.perf_counter()
    run.token = ensure_unlearning_token(run.model, run.tokenizer, fingerprint=run.fingerprint, cache_dir=run.cache_dir,
                                        config=run.token_config, augment_layers=run.layers,
                                        progress=run.context.progress, own_answers=run.own_answers)
    run.timed("token", started)


def _token_cache_key(run: _Round) -> str | None:
    return run.token.cache_key or run.previous.get("token", {}).get("cache_key")


def _build_preserved_keys(run: _Round) -> None:
    started = time.perf_counter()
    run.preserved = build_preserved_keys(run.model, run.tokenizer, run.adapter, run.layers, run.config,
                                         fingerprint=run.fingerprint, token_id=run.token.token_id,
                                         token_key=_token_cache_key(run), state=run.source_input.state,
                                         cache_dir=run.cache_dir, own_answers=run.own_answers,
                                         progress=run.context.progress)
    run.timed("statistics", started)


def _edit(run: _Round) -> None:
    """Scope (which requests share a target), then the edit passes."""
    started = time.perf_counter()
    record_texts = run.context.record_texts
    run.scoped = scoped = _resolve_scope(run)
    entity_scope = [scoped.entity_kind(i) for i in range(len(scoped.requests))]
    # the added questions' answers are generated with the rest
    answer_ids = run.options.answer_ids if not scoped.added else None
    run.result = run_edit_passes(run.model, run.tokenizer, run.adapter, scoped.requests, run.token.token_id, run.config,
                                 run.preserved, progress=run.context.progress, answer_ids=answer_ids,
                                 groups=scoped.groups, entity_scope=entity_scope)
    run.timed("edit", started)
    passes = run.result.passes
    not_reached = [run.reqs[i] for i in run.result.not_reached_indices if i < len(run.reqs)]
    if not_reached:
        log.warning("%d of %d request(s) do not start their answer with %s after %d pass(es): %s. Run forget again on the "
                    "output to continue (its round optimises their targets afresh); more passes help only where the "
                    "last ones still reached some (%d in a row that reach none set the rest aside)",
                    len(not_reached), len(run.reqs), run.token.token, len(passes),
                    "; ".join(r.question if record_texts else r.digest()[:12] for r in not_reached), STALL_PASSES)
    for name in passes[0]["timings_s"]:
        run.timings[f"edit.{name}"] = sum(p["timings_s"].get(name, 0.0) for p in passes)


def _place_token(run: _Round) -> None:
    """The checkpoint's generation config lets the token open an answer and appear nowhere else
    (``token.placement``), unless ``token_at_start_only`` is off, and writes the chosen refusal after
    it (``refusal_in_generation_config``); in force for the checks that follow."""
    run.header = keep_to_answer_start(run.model, run.tokenizer, run.token.token_id, run.config.token_at_start_only)
    if run.header is not None:
        log.info("the checkpoint generates %s only as an answer's first token (a sequence_bias in its generation config)",
                 run.token.token)
    writes = run.header is not None and run.config.refusal_in_generation_config and run.config.refusal
    lead_into_refusal(run.model, run.token.token_id,
                      refusal_ids(run.tokenizer, run.config.refusal, run.token.token_id,
                                  has_chat_template(run.tokenizer))[1:] if writes else None)
    if writes:
        log.info("the checkpoint's generation config writes the chosen refusal after %s and ends the answer there",
                 run.token.token)


def _resolve_scope(run: _Round):
    """The round's entity groups (``scope.resolve_with_evidence``: the model's own answers attribute
    the requests that describe an entity without naming it), logged."""
    from ..generation import generate_answers

    scoped = resolve_with_evidence(run.reqs, run.options.scope, run.config.neutral_templates,
                                   lambda questions: generate_answers(run.model, run.tokenizer, questions,
                                                                      max_new_tokens=EVIDENCE_TOKENS),
                                   person_questions=run.config.person_templates)
    show = (lambda i: run.reqs[i].question) if run.context.record_texts else (lambda i: run.reqs[i].digest()[:12])
    for info in scoped.entities:
        log.info("entity scope: %d request(s) about %r share one target (%d attributed by an answer naming it); "
                 "%d question(s) about it added", len(info["requests"]),
                 info["entity"] if run.context.record_texts else "(not recorded)", len(info["attributed"]),
                 len(info["added"]))
    if scoped.unattributed:
        log.warning("%d request(s) asked for in entity scope name no person or organisation of the round, and neither "
                    "their answer nor the model's names one: erased as single facts (fact scope): %s. Give them a "
                    "'subject' to erase that entity", len(scoped.unattributed),
                    "; ".join(show(i) for i in scoped.unattributed))
    return scoped


def _dry_run(reqs, source, context: RunContext, options: EraseOptions) -> ForgetResult:
    """What the round would erase (``--dry-run``): the scope and key tokens, nothing trained or written."""
    run = _load_round(reqs, source, None, context, options)
    run.config, run.recipe = _resolve_config(run.model, options, run.cache_dir)
    scoped = _resolve_scope(run)
    adapter = find_mlp_output(run.model)
    described = [scoped.described(i) for i in range(len(scoped.requests))]
    mode = run.config.key_position
    ends = (choose_key_chars(run.model, run.tokenizer, adapter, scoped.requests, mode, 0, None, described)
            if mode != "distinct" else [None] * len(scoped.requests))

    def item(i: int) -> dict:
        question, end = scoped.requests[i].question, ends[i]
        key = re.findall(r"\S+$", question[:end])[-1] if end else ("(chosen during the edit)" if mode == "distinct"
                                                                        else "(the last prompt token)")
        return {"question": question, "key": key}

    plan = {"entities": [{"entity": e["entity"], "person": e["person"], "from": e["from"],
                          "requests": [item(i) for i in e["requests"]], "attributed": e["attributed"],
                          "added": [item(i) for i, m in enumerate(scoped.members) if m == g and i >= len(reqs)]}
                         for g, e in enumerate(scoped.entities)],
            "facts": [item(i) for i in range(len(reqs)) if scoped.scopes[i] == "fact" and i not in scoped.unattributed],
            "unattributed": [item(i) for i in scoped.unattributed]}
    return ForgetResult(None, {"dry_run": plan}, run.model, run.tokenizer)


def _manifest(run: _Round) -> dict:
    rounds = list(run.previous.get("rounds", []))
    rounds.append(_round_record(len(rounds) + 1, run))
    base = run.previous.get("base_model") or base_model_info(run.model, run.context.spec, run.fingerprint)
    return Manifest("unierase", base, {
        "token": {"string": run.token.token, "id": run.token.token_id, "cache_key": _token_cache_key(run),
                  "training": run.token_config.to_dict(), "only_after": run.header},
        "layers": run.layers,
        "module": run.adapter.mlp_output_path,
        "parameter_fraction": run.adapter.edited_fraction(run.layers, run.model),
        "statistics": run.preserved.statistics,
        "prompt": {"format": "chat" if has_chat_template(run.tokenizer) else "plain",
                   **({"chat_template_date": PINNED_DATE} if has_chat_template(run.tokenizer) else
                      {"template": PLAIN_TEMPLATE})},
        "rounds": rounds,
        "total_seconds": round(time.perf_counter() - run.started, 2),
    }, base_history=run.base_history or run.previous.get("base_history")).to_dict()


def _check_and_save(run: _Round, out, manifest: dict) -> Path:
    """Ask the erased questions and their neighbours once more, then write checkpoint, manifest,
    ledger entry and revert data in one atomic swap."""
    out_path = Path(out)
    started = time.perf_counter()
    record_texts = run.context.record_texts
    check = probe(run.model, run.tokenizer, run.reqs,
                  neighbour_questions(run.reqs, record_texts=record_texts, extra=run.substitutes),
                  run.token.token_id, record_texts=record_texts)
    run.timed("verification", started)
    last = manifest["rounds"][-1]
    entry = {"kind": "erase", "method": "unierase", "version": __version__, "mode": run.mode,
             "requests": last["requests"], "settings": {"layers": run.layers, "edit": run.hyperparameters},
             "verification": check}
    save_round(out_path, run.model, run.tokenizer, run.start, run.source_input, manifest=manifest, entry=entry,
               state=run.source_input.state, force=run.context.force, factors=run.result.updates.recorded())
    log.info("saved the edited checkpoint to %s (erased at once: %d of %d requests)", out_path, check["erased"],
             len(run.reqs))
    return out_path


def _resolve_config(model, options: EraseOptions, cache_dir=None):
    """(EditConfig, recipe or None): a caller's own config as given (copied and validated by
    ``replace``), else the neutral defaults with the recipe matching this model's config (one
    ``calibrate`` wrote into ``cache_dir`` first); the
    round's options (layers, statistics tokens, passes, key position, solver) and the caller's
    individual ``settings`` over either."""
    changes = {"layers": list(options.layers) if options.layers is not None else None,
               "stats_tokens": options.stats_tokens, "max_passes": options.max_passes,
               "key_position": options.key_position, "solver": options.solver, "refusal": options.refusal}
    changes = {k: v for k, v in changes.items() if v is not None}
    if options.edit_config is None:
        config, recipe = edit_config_for(model.config, cache_dir=cache_dir, **changes)
    else:
        config, recipe = dataclasses.replace(copy.deepcopy(options.edit_config), **changes), None
    config = with_settings(config, options.settings)
    log.info("edit settings: %s%s", f"recipe {recipe.name} ({recipe.source})" if recipe else
             "the caller's EditConfig" if options.edit_config is not None else
             "neutral defaults (no recipe matches this model)",
             f", with {options.settings}" if any((options.settings or {}).values()) else "")
    return config, recipe


def _round_record(number: int, run: _Round) -> dict:
    """The manifest's record of one round (texts only with ``record_texts``)."""
    reqs, result, scoped, record_texts = run.reqs, run.result, run.scoped, run.context.record_texts
    not_reached = [reqs[i] for i in result.not_reached_indices if i < len(reqs)]
    key_tokens = result.key_tokens
    return {
        "round": number,
        "mode": run.mode,
        "requests": [dict(sha256=r.digest(), **(r.to_dict() if record_texts else {})) for r in reqs],
        "source": run.source,
        "layers": run.layers,
        "key_tokens": key_tokens[:len(reqs)] if record_texts else None,
        "scope": {"default": run.options.scope, "requests": scoped.scopes,
                  "entities": [{"entity": e["entity"] if record_texts else None, "from": e["from"], "person": e["person"],
                                "requests": e["requests"], "attributed": e["attributed"],
                                "added": e["added"] if record_texts else len(e["added"]),
                                "key_token": key_tokens[e["requests"][0]] if record_texts and key_tokens else None}
                               for e in scoped.entities],
                  "unattributed": scoped.unattributed,
                  "added_not_reached": sum(1 for i in result.not_reached_indices if i >= len(reqs))},
        "recipe": run.recipe.name if run.recipe else None,
        "recipe_source": run.recipe.source if run.recipe else None,
        "settings": {k: v for k, v in (run.options.settings or {}).items() if v},
        "hyperparameters": run.hyperparameters,
        "timings_s": {k: round(v, 3) for k, v in run.timings.items()},
        "peak_memory_mb": peak_memory_mb(),
        **runtime_info(run.model),
        "passes": result.passes,
        "not_reached": [r.digest() for r in not_reached],
        "plan": run.plan,
        "null_space_dims": result.last.null_dims,
        "state": {"mb": round(run.preserved.state.nbytes() / 2 ** 20, 2), "key_rows": {
            l: int(r.shape[0]) for l, r in run.preserved.state.key_rows.items()},
                  "summed_layers": sorted(run.preserved.state.previous_keys)},
        "update_norms": result.last.update_norms,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
