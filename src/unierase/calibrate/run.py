"""``unierase calibrate``: find the edit settings of a model no recipe knows, by measuring it.

Reading top-down: the model's own known facts are mined from the calibration pool → causal
tracing nominates the layers where it recalls them → trials of the search's stages
(``search.stages``), each an erasure of the same calibration facts from a copy of the model → the
best trial's settings are written as a recipe (with the trials that chose them) into the cache,
where ``forget`` finds it for every model of the same configuration.

Every step is cached (known facts, tracing, each trial), so an interrupted run resumes where it
stopped; a trial's token and key statistics are the cache's own, so the chosen recipe's first
``forget`` reuses them.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..cache import Cache, code_digest, content_key
from ..edit.recipes import recipes_dir
from ..storage import UniEraseError, default_cache_dir, write_json_atomic

log = logging.getLogger(__name__)

CALIBRATION_KIND = "calibration"


@dataclass
class CalibrationConfig:
    """How much ``calibrate`` measures (more facts: firmer choices, longer trials)."""

    forget: int = 24
    """Known calibration facts erased in every trial (questions only, one batch; at most a third of
    the facts the model knows, so that twice as many stay neighbours): several per relation, so a
    relation the edit cannot reach shows before a recipe is chosen (why 24: docs/design.md)."""
    neighbours: int = 48
    """Known calibration facts that must keep their answers in every trial (up to this many; a
    neighbour moves the known share by 2 points at 48, by 3.6 at 28)."""
    trace_facts: int = 16
    """Known facts traced (taken in turn from each relation; each costs ``trace_samples`` forward
    passes of one prompt per layer window)."""
    trace_samples: int = 2
    """Noise draws per fact in the causal tracing."""
    trace_noise: float = 3.0
    """σ of the tracing's corruption, in standard deviations of the input embeddings (ROME's 3)."""
    min_forget: int = 4
    """Fewer known facts than this to erase (or twice this to keep) and the model cannot be calibrated."""
    fixed: dict = field(default_factory=dict)
    """Recipe ``edit`` fields every trial uses and the recipe keeps (e.g. ``{"stats_tokens": 50000}``)."""
    stages: list[str] | None = None
    """Names of ``search.stages`` to run (``None``: all of them, in order)."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CalibrationResult:
    path: Path
    recipe: dict = field(repr=False)

    def summary(self) -> str:
        cal = self.recipe["calibration"]
        chosen = cal["trials"][cal["chosen"]]
        fig = chosen["figures"]
        return (f"calibrated recipe {self.recipe['name']} written to {self.path}: layers {cal['layers']}, "
                f"{len(self.recipe['edit'])} setting(s) off the neutral defaults; on {cal['forget']} calibration facts "
                f"erased {fig['forget']:.0%}, known neighbours kept {_share(fig['known_still_correct'])}, teacher-forced "
                f"agreement {fig['teacher_forced_agreement']:.1%}, rewordings back {fig['rewordings']:.0%}; "
                f"{len(cal['trials'])} trial(s), {cal['seconds']:.0f} s")


def _share(value) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def recipe_name(model_config) -> str:
    match = _match(model_config)
    return f"calibrated-{match.get('model_type')}-{match.get('num_hidden_layers')}x{match.get('hidden_size')}"


def _match(model_config) -> dict:
    """The config fields a calibrated recipe requires (the shipped recipes' kind of match)."""
    fields = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size")
    return {f: getattr(model_config, f, None) for f in fields if getattr(model_config, f, None) is not None}


def calibrate(model=None, *, tokenizer=None, out=None, overwrite: bool = False, cache_dir=None, dtype=None,
              device_map=None, config: CalibrationConfig | None = None, progress: bool = True,
              pool: list[dict] | None = None) -> CalibrationResult:
    """Calibrate the edit settings of ``model`` (a directory, hub id, packaged name, ``None`` for
    the default model, or a loaded model with its ``tokenizer``) and write the recipe to ``out``
    (default: ``<cache>/recipes/<name>.json``, where ``forget`` uses it). ``pool``: rows with
    ``pool.POOL_FIELDS`` instead of the packaged calibration pool."""
    from ..edit.config import default_layers
    from ..models.adapters import find_mlp_output
    from ..models.loading import model_fingerprint
    from ..record.rounds import load_checked_model
    from .pool import load_pool
    from .search import better, bounds_met, merged, stages
    from .tracing import best_window

    config = config or CalibrationConfig()
    started = time.perf_counter()
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    if model is None or isinstance(model, (str, os.PathLike)):
        model, tokenizer = load_checked_model(model, cache_dir=root, device_map=device_map, dtype=dtype)
    elif tokenizer is None:
        raise UniEraseError("pass the tokenizer together with an in-memory model")
    path = Path(out) if out is not None else recipes_dir(root) / f"{recipe_name(model.config)}.json"
    if path.exists() and not overwrite:
        raise UniEraseError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    adapter = find_mlp_output(model)
    fingerprint = model_fingerprint(model)
    cache = Cache(root)

    pool = load_pool() if pool is None else pool
    known, forget_rows, neighbours = _facts(cache, model, tokenizer, pool, fingerprint, config)
    log.info("calibration: the model answers %d of %d pool questions; %d erased in each trial, %d kept",
             len(known), len(pool), len(forget_rows), len(neighbours))

    default = default_layers(adapter.num_layers)
    tracing = _tracing(cache, model, tokenizer, adapter, known, len(default), fingerprint, config)
    traced = best_window(tracing)
    log.info("calibration: causal tracing puts the recall at layers %s (default %s)", traced, default)

    search = [s for s in stages(traced, default, adapter.num_layers) if config.stages is None or s.name in config.stages]
    total = 1 + sum(len(s.candidates) for s in search)
    bar = _bar(total, progress)
    trials = [_trial(cache, model, tokenizer, dict(config.fixed), "neutral defaults", forget_rows, neighbours, fingerprint,
                     root, progress)]
    bar.update(1)
    best, why = 0, {name: "given by the caller (CalibrationConfig.fixed), not measured" for name in config.fixed}
    for stage in search:
        for change in stage.candidates:
            trial = _trial(cache, model, tokenizer, merged(trials[best]["edit"], change), stage.name, forget_rows,
                           neighbours, fingerprint, root, progress)
            trials.append(trial)
            bar.update(1)
            kept = better(trial, trials[best])
            bounds = bounds_met(trial["figures"]), bounds_met(trials[best]["figures"])
            log.info("calibration: %s %s (score %.3f against %.3f%s)", stage.name, "kept" if kept else "not kept",
                     trial["score"], trials[best]["score"],
                     "" if bounds[0] == bounds[1] else "; the bounds come first: erasing, then locality")
            if kept:
                why.update({name: f"{stage.why}: score {trial['score']:.3f} against {trials[best]['score']:.3f} "
                                  f"(calibration.trials[{len(trials) - 1}])" for name in change})
                best = len(trials) - 1
    bar.close()
    recipe = _recipe(model.config, trials, best, why, tracing, forget_rows, neighbours, known, pool, config,
                     layers=trials[best]["edit"].get("layers", default), seconds=time.perf_counter() - started)
    write_json_atomic(path, recipe)
    return CalibrationResult(path, recipe)


def _bar(total: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="calibration trials", disable=not progress)


def score_edit(model, tokenizer, edit: dict, *, cache_dir=None, config: CalibrationConfig | None = None) -> dict:
    """The trial ``calibrate`` would run for the recipe fields ``edit`` (on the model's calibration
    facts, cached alike): its stage, settings, figures and score, with the facts' counts."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    fingerprint, forget_rows, neighbours = _split(root, model, tokenizer, config)
    trial = _trial(Cache(root), model, tokenizer, edit, "given", forget_rows, neighbours, fingerprint, root, False)
    return {**trial, "forget": len(forget_rows), "neighbours": len(neighbours)}


def calibration_split(model, tokenizer, *, cache_dir=None, config: CalibrationConfig | None = None
                      ) -> tuple[list[dict], list[dict]]:
    """(the calibration facts every trial erases, those it keeps) for this model, as ``calibrate``
    finds them (cached alike)."""
    _, forget_rows, neighbours = _split(Path(cache_dir) if cache_dir else default_cache_dir(), model, tokenizer, config)
    return forget_rows, neighbours


def _split(root: Path, model, tokenizer, config: CalibrationConfig | None):
    """(the model's fingerprint, the facts each trial erases, those it keeps) from the bundled pool."""
    from ..models.loading import model_fingerprint
    from .pool import load_pool

    fingerprint = model_fingerprint(model)  # once: on an offloaded model it reads every weight
    _, forget_rows, neighbours = _facts(Cache(root), model, tokenizer, load_pool(), fingerprint,
                                        config or CalibrationConfig())
    return fingerprint, forget_rows, neighbours


def _facts(cache: Cache, model, tokenizer, pool: list[dict], fingerprint: str, config: CalibrationConfig):
    """(the pool facts the model answers, those each trial erases, those it keeps); refused when too few."""
    from .pool import split_facts

    known = _known(cache, model, tokenizer, pool, fingerprint)
    forget_rows, neighbours = split_facts(known, config.forget, config.neighbours)
    if len(forget_rows) < config.min_forget or len(neighbours) < 2 * config.min_forget:
        raise UniEraseError(f"the model answers only {len(known)} of the calibration pool's {len(pool)} questions: too "
                            f"few to calibrate on (at least {3 * config.min_forget} needed)")
    return known, forget_rows, neighbours


def _known(cache: Cache, model, tokenizer, pool: list[dict], fingerprint: str) -> list[dict]:
    from .. import generation, prompts
    from . import pool as pool_module

    key = content_key(fingerprint, pool, code_digest(pool_module, generation, prompts))
    known = cache.load_json(CALIBRATION_KIND, key, "known.json")
    if known is None:
        known = pool_module.known_facts(model, tokenizer, pool)
        cache.save_json(CALIBRATION_KIND, key, known, "known.json")
    return known


def _tracing(cache: Cache, model, tokenizer, adapter, known: list[dict], window: int, fingerprint: str,
             config: CalibrationConfig) -> dict:
    from . import tracing

    from .pool import in_turn

    rows = [{"question": r["question"], "subject": r["subject"]} for r in in_turn(known)[:config.trace_facts]]
    key = content_key(fingerprint, rows, window, config.trace_noise, config.trace_samples, code_digest(tracing))
    found = cache.load_json(CALIBRATION_KIND, key, "tracing.json")
    if found is None:
        started = time.perf_counter()
        found = tracing.window_effects(model, tokenizer, adapter, rows, window, noise=config.trace_noise,
                                       samples=config.trace_samples)
        found["seconds"] = round(time.perf_counter() - started, 1)
        cache.save_json(CALIBRATION_KIND, key, found, "tracing.json")
    return found


def _trial(cache: Cache, model, tokenizer, edit: dict, stage: str, forget_rows, neighbours, fingerprint: str, root: Path,
           progress: bool) -> dict:
    """Erase ``forget_rows`` from a copy of the model with the recipe fields ``edit`` over the
    neutral defaults and measure (cached per model, facts, settings and the edit's code)."""
    from .. import demo, edit_checks
    from ..edit import editor, erase, preserved, values
    from .search import figures, score

    questions = [[r["question"] for r in forget_rows], [r["question"] for r in neighbours]]
    key = content_key(fingerprint, questions, edit, code_digest(demo, edit_checks, erase, editor, preserved, values))
    summary = cache.load_json(CALIBRATION_KIND, key, "trial.json")
    if summary is None:
        from ..demo import erase_and_measure
        from ..edit.recipes import Recipe, apply_recipe

        log.info("calibration trial (%s): %s", stage, edit or "neutral defaults")
        edit_config = apply_recipe(Recipe("trial", {"model_type": None}, edit), {})
        measured = erase_and_measure(copy.deepcopy(model), copy.deepcopy(tokenizer), forget_rows, neighbours,
                                     cache_dir=root, progress=progress, edit_config=edit_config)
        summary = measured.summary
        cache.save_json(CALIBRATION_KIND, key, summary, "trial.json")
    fig = figures(summary)
    return {"stage": stage, "edit": edit, "figures": fig, "score": score(fig)}


def _recipe(model_config, trials, best, why, tracing, forget_rows, neighbours, known, pool, config, *, layers,
            seconds: float) -> dict:
    """The recipe file: the chosen trial's settings, the measured reason for each, and every trial."""
    return {
        "name": recipe_name(model_config),
        "description": (f"Calibrated by unierase calibrate on {len(known)} facts the model answers of the "
                        f"{len(pool)}-question calibration pool ({len(forget_rows)} erased per trial, "
                        f"{len(neighbours)} kept), never on the demo, held-out or TOFU facts."),
        "match": _match(model_config),
        "edit": trials[best]["edit"],
        "why": why,
        "calibration": {"config": config.to_dict(), "forget": len(forget_rows), "neighbours": len(neighbours),
                        "known": len(known), "pool": len(pool), "layers": layers, "tracing": tracing,
                        "trials": trials, "chosen": best, "seconds": round(seconds, 1),
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }
