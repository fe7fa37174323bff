"""UniErase as a method: requests + model → unlearning token → preserved keys → edit passes →
checkpoint, manifest and ledger entry.

The stages, each in its own module: ``scope`` (which requests share a target), ``prompts`` (every
question the edit runs), ``keys``, ``values`` (the target values), ``preserved`` (C₀, its null
space, the sequential state, the round's soft constraint), ``solve`` (closed forms by name) and
``editor`` (the passes that run them); ``rounds`` writes the result. ``erase`` is the entry of
``unierase.methods.METHODS['unierase']``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..generation import OwnAnswers
from ..manifest import Manifest, base_model_info
from ..measure import peak_memory_mb
from ..methods import RunContext
from ..models.adapters import find_mlp_output
from ..models.loading import load_model, model_fingerprint
from ..prompts import PINNED_DATE
from ..recipes import edit_config_for, token_with_settings, with_settings
from ..requests import SCOPES, ForgetRequest
from ..rounds import embedding_names, load_input, neighbour_questions, probe, save_round, start_round
from ..storage import UniEraseError, default_cache_dir, locked_run
from ..token.cache import ensure_unlearning_token
from ..token.questions import training_questions
from ..token.training import UnlearningTokenConfig
from .editor import EditConfig, run_edit_passes
from .preserved import build_preserved_keys
from .scope import resolve_scope
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
        last = self.manifest["rounds"][-1]
        t = last["timings_s"]
        return (f"erased {len(last['requests'])} request(s) in round {last['round']} ({last['mode']}); layers {last['layers']}; "
                f"edit {t.get('edit', 0):.1f} s, token {t.get('token', 0):.1f} s, statistics {t.get('statistics', 0):.1f} s; "
                f"parameter fraction {self.manifest['parameter_fraction']:.4%}"
                + (f"; {len(last['not_reached'])} request(s) not reached yet (manifest: not_reached)" if last.get("not_reached") else "")
                + (f"; saved to {self.out}" if self.out else ""))


EDIT_TOKEN_RESERVE = 128
"""Context left beside each request's prompt for the edit's prefixes and its target continuation."""

MIN_STATS_TOKENS = 1000
"""Fewer corpus tokens than this give no usable estimate of the preserved keys' statistics."""


def erase(reqs: list[ForgetRequest], source: str, out, context: "RunContext", *, mode: str | None = None, scope: str = "auto",
          layers: list[int] | None = None, key_position: str = "auto", solver: str = "alphaedit",
          stats_tokens: int | None = None, max_passes: int | None = None, edit_config: EditConfig | None = None,
          token_config=None, answer_ids: list[list[int]] | None = None,
          settings: dict[str, dict] | None = None) -> ForgetResult:
    """One UniErase round (``api.forget`` with ``method='unierase'``; ``context``: ``methods.RunContext``)."""
    if scope not in SCOPES:
        raise UniEraseError(f"unknown scope {scope!r} (choose from {', '.join(SCOPES)})")
    if mode not in (None, "batch", "sequential", "precise"):
        raise UniEraseError(f"unknown mode {mode!r} (batch, sequential or precise)")
    if mode == "precise" and len(reqs) != 1:
        raise UniEraseError(f"precise mode edits exactly one request; {source} has {len(reqs)}")
    if stats_tokens is not None and stats_tokens < MIN_STATS_TOKENS:
        raise UniEraseError(f"stats_tokens must be at least {MIN_STATS_TOKENS} (got {stats_tokens})")
    if max_passes is not None and max_passes < 1:
        raise UniEraseError(f"max_passes must be at least 1 (got {max_passes})")
    c = context
    with locked_run(out, [c.model_dir]):
        return _erase_round(reqs, source, out, model=c.model, model_dir=c.model_dir, tokenizer=c.tokenizer, mode=mode,
                            scope=scope, layers=layers, key_position=key_position, solver=solver,
                            record_texts=c.record_texts, cache_dir=c.cache_dir, device_map=c.device_map, seed=c.seed,
                            stats_tokens=stats_tokens, max_passes=max_passes, edit_config=edit_config,
                            token_config=token_config, progress=c.progress, answer_ids=answer_ids, hub_id=c.hub_id,
                            spec=c.spec, settings=settings)


def _erase_round(reqs, source, out, *, model, model_dir, tokenizer, mode, scope, layers, key_position, solver,
                 record_texts, cache_dir, device_map, seed, stats_tokens, max_passes, edit_config, token_config,
                 progress, answer_ids, hub_id, spec, settings) -> ForgetResult:
    source_input = load_input(model_dir)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    torch.manual_seed(seed)
    started_all = time.perf_counter()
    timings: dict[str, float] = {}

    started = time.perf_counter()
    if model_dir is not None or hub_id is not None:
        model, tokenizer = load_model(model_dir or hub_id, cache_dir=cache_dir, device_map=device_map)
    elif tokenizer is None:
        raise UniEraseError("pass the tokenizer together with an in-memory model")
    timings["load"] = time.perf_counter() - started
    from ..generation import check_lengths

    check_lengths(model, tokenizer, [r.question for r in reqs], EDIT_TOKEN_RESERVE, what="request")
    previous = source_input.manifest or {}
    base_history = None
    if previous.get("method") != "unierase":
        # a plain, fine-tuned or baseline-unlearned checkpoint: UniErase starts from it as its base;
        # what made it stays in the manifest (and the ledger continues)
        base_history, previous = (previous or None), {}
    state = source_input.state
    mode = mode or ("sequential" if previous else "batch")

    config, recipe = _resolve_config(model, edit_config, layers, stats_tokens, max_passes, key_position, solver, settings)
    adapter = find_mlp_output(model)
    edit_layers = config.resolved_layers(adapter.num_layers)
    if previous and previous.get("layers") and previous["layers"] != edit_layers:
        raise UniEraseError(f"{model_dir} was edited at layers {previous['layers']}; a sequential round must use the same layers")
    state.validate(edit_layers, adapter.key_dim(edit_layers[0]), source=f"{model_dir}/unierase_state.safetensors")
    token_config = token_with_settings(token_config or UnlearningTokenConfig(seed=seed), settings)
    # the tensors the round may change: the edited projections and the embeddings of the token
    start = (start_round(model, state, changes=[f"{adapter.module_name(l)}.weight" for l in edit_layers]
                         + embedding_names(model)) if out else None)

    base_fingerprint = previous.get("base_model", {}).get("fingerprint") or model_fingerprint(model)
    # the model's own answers to the generic questions, generated at most once for the token and the statistics
    own_answers = OwnAnswers(model, tokenizer, training_questions(), ANSWER_KEY_TOKENS, suppress=(token_config.token,))
    started = time.perf_counter()
    token = ensure_unlearning_token(model, tokenizer, fingerprint=base_fingerprint, cache_dir=cache_dir,
                                    config=token_config, augment_layers=edit_layers, progress=progress,
                                    own_answers=own_answers)
    timings["token"] = time.perf_counter() - started

    started = time.perf_counter()
    preserved = build_preserved_keys(model, tokenizer, adapter, edit_layers, config, fingerprint=base_fingerprint,
                                     token_id=token.token_id,
                                     token_key=token.cache_key or previous.get("token", {}).get("cache_key"),
                                     state=state, cache_dir=cache_dir, own_answers=own_answers, progress=progress)
    timings["statistics"] = time.perf_counter() - started

    started = time.perf_counter()
    scoped = resolve_scope(reqs, scope, config.neutral_templates)
    for info in scoped.entities:
        log.info("entity scope: %d request(s) about %r share one target; %d neutral question(s) about it added",
                 len(info["requests"]), info["entity"] if record_texts else "(not recorded)", len(info["added"]))
    entity_scope = [scoped.entity_kind(i) for i in range(len(scoped.requests))]
    if answer_ids is not None and scoped.added:  # the added questions' answers are generated with the rest
        answer_ids = None
    result = run_edit_passes(model, tokenizer, adapter, scoped.requests, token.token_id, config, preserved,
                             progress=progress, answer_ids=answer_ids, groups=scoped.groups, entity_scope=entity_scope)
    passes = result.passes
    timings["edit"] = time.perf_counter() - started
    not_reached = [reqs[i] for i in result.not_reached_indices if i < len(reqs)]
    if not_reached:
        log.warning("%d of %d request(s) do not start their answer with %s after %d pass(es): %s. Run forget again on the "
                    "output to continue, or raise max_passes", len(not_reached), len(reqs), token.token, len(passes),
                    "; ".join(r.question if record_texts else r.digest()[:12] for r in not_reached))
    for name in passes[0]["timings_s"]:
        timings[f"edit.{name}"] = sum(p["timings_s"].get(name, 0.0) for p in passes)

    rounds = list(previous.get("rounds", []))
    round_record = _round_record(len(rounds) + 1, mode, reqs, source, edit_layers, result, scoped, scope, record_texts,
                                 recipe, settings, config, timings)
    rounds.append(round_record)
    manifest = Manifest("unierase", previous.get("base_model") or base_model_info(model, spec, base_fingerprint), {
        "token": {"string": token.token, "id": token.token_id, "cache_key": token.cache_key or previous.get("token", {}).get("cache_key"),
                  "training": token_config.to_dict()},
        "layers": edit_layers,
        "module": adapter.mlp_output_path,
        "parameter_fraction": adapter.edited_fraction(edit_layers, model),
        "statistics": preserved.statistics,
        "prompt": {"chat_template_date": PINNED_DATE},
        "rounds": rounds,
        "total_seconds": round(time.perf_counter() - started_all, 2),
    }, base_history=base_history or previous.get("base_history")).to_dict()
    out_path = None
    if out is not None:
        out_path = Path(out)
        started = time.perf_counter()
        from .prompts import neutral_questions

        substitutes = [q for per in neutral_questions(reqs, 0, 2) for q, _ in per]
        check = probe(model, tokenizer, reqs, neighbour_questions(reqs, record_texts=record_texts, extra=substitutes),
                      token.token_id, record_texts=record_texts)
        timings["verification"] = time.perf_counter() - started
        entry = {"kind": "erase", "method": "unierase", "version": __version__, "mode": mode,
                 "requests": round_record["requests"], "settings": {"layers": edit_layers, "edit": config.to_dict()},
                 "verification": check}
        save_round(out_path, model, tokenizer, start, source_input, manifest=manifest, entry=entry, state=state)
        log.info("saved the edited checkpoint to %s (erased at once: %d of %d requests)", out_path, check["erased"], len(reqs))
    return ForgetResult(out_path, manifest, model, tokenizer)


def _resolve_config(model, edit_config, layers, stats_tokens, max_passes, key_position, solver, settings):
    """(EditConfig, recipe or None): a caller's own config as given (copied and validated by
    ``replace``), else the neutral defaults with the recipe matching this model's config; the
    round's flags and the caller's individual ``settings`` over either."""
    changes = {"layers": list(layers) if layers is not None else None, "stats_tokens": stats_tokens,
               "max_passes": max_passes}
    if edit_config is None:
        config, recipe = edit_config_for(model.config, key_position=key_position, solver=solver, **changes)
    else:
        config, recipe = dataclasses.replace(copy.deepcopy(edit_config),
                                             **{k: v for k, v in changes.items() if v is not None}), None
    config = with_settings(config, settings)
    log.info("edit settings: %s%s", f"recipe {recipe.name} ({recipe.source})" if recipe else
             "the caller's EditConfig" if edit_config is not None else "neutral defaults (no recipe matches this model)",
             f", with {settings}" if any((settings or {}).values()) else "")
    return config, recipe


def _round_record(number, mode, reqs, source, edit_layers, result, scoped, scope, record_texts, recipe, settings,
                  config, timings) -> dict:
    """The manifest's record of one round (texts only with ``record_texts``)."""
    not_reached = [reqs[i] for i in result.not_reached_indices if i < len(reqs)]
    return {
        "round": number,
        "mode": mode,
        "requests": [dict(sha256=r.digest(), **(r.to_dict() if record_texts else {})) for r in reqs],
        "source": source,
        "layers": edit_layers,
        "key_tokens": result.key_tokens[:len(reqs)] if record_texts else None,
        "scope": {"default": scope, "requests": scoped.scopes,
                  "entities": [{"entity": e["entity"] if record_texts else None, "from": e["from"], "person": e["person"],
                                "requests": e["requests"], "added": e["added"] if record_texts else len(e["added"]),
                                "key_token": result.key_tokens[e["requests"][0]] if record_texts and result.key_tokens else None}
                               for e in scoped.entities],
                  "added_not_reached": sum(1 for i in result.not_reached_indices if i >= len(reqs))},
        "recipe": recipe.name if recipe else None,
        "settings": {k: v for k, v in (settings or {}).items() if v},
        "hyperparameters": config.to_dict(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "peak_memory_mb": peak_memory_mb(),
        "passes": result.passes,
        "not_reached": [r.digest() for r in not_reached],
        "null_space_dims": result.last.null_dims,
        "update_norms": result.last.update_norms,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
