"""The Python API: the same verbs as the command line (``forget``, ``ask``, ``demo``, ``evaluate``…).

``forget`` reads the requests, checks where it will write, and hands both to the method it looks
up in ``registry``: UniErase (``edit.erase``) or a fine-tuning baseline.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from . import edit  # noqa: F401, I001  (importing edit, then baselines, registers their methods in this order)
from . import baselines  # noqa: F401, E402
from .edit import ForgetResult
from .models.loading import DEFAULT_MODEL, resolve_model_path
from .record.rounds import load_checked_model, read_manifest
from .registry import RunContext, get_method
from .requests import as_requests
from .storage import UniEraseError, check_output_dir

log = logging.getLogger(__name__)


def forget(requests, out: str | os.PathLike | None = None, *, model=None, tokenizer=None, method: str = "unierase",
           overwrite: bool = False, record_texts: bool = True, cache_dir=None, device_map=None, seed: int = 0,
           progress: bool = True, force: bool = False, dtype=None, options=None, **option_fields) -> ForgetResult:
    """Erase ``requests`` (a JSONL path or a list of dicts/ForgetRequest) from ``model`` with ``method``
    (``unierase methods``: 'unierase' or a fine-tuning baseline).

    ``model`` is a directory, a hub id, ``None`` for the embedded default, or an already loaded
    model (then pass ``tokenizer`` too and ``out`` may be ``None`` to edit in memory only).
    Running it on a directory written by an earlier call continues sequentially from its state.
    The method's own options are the fields of its options dataclass (``edit.EraseOptions`` for
    UniErase: ``scope``, ``layers``, ``settings``…; ``baselines.BaselineOptions``: ``retain``,
    ``lr``…), given as keywords or as one ``options`` object; a field the method does not have is
    an error, never ignored. A round whose model no longer gives its own answers to generic and
    neighbour questions is not saved (``record.guard``) unless ``force``.
    """
    entry = get_method(method)
    if options is None:
        options = entry.make_options(option_fields)
    elif option_fields:
        raise UniEraseError("give the method's options either as an options object or as keywords, not both")
    elif not isinstance(options, entry.options):
        raise UniEraseError(f"method {entry.name!r} takes {entry.options.__name__}, not {type(options).__name__}")
    reqs, source = as_requests(requests)
    options.check(reqs, source)  # the method's own one-line errors, before the model is looked for
    given_dir = model if isinstance(model, (str, os.PathLike)) and Path(model).expanduser().is_dir() else None
    if out is not None and options.writes_output():
        check_output_dir(out, overwrite, allow_same_as=given_dir if _is_unierase_output(given_dir) else None,
                         cache_dir=cache_dir)
    model_dir = hub_id = None
    if model is None or isinstance(model, (str, os.PathLike)):
        resolved = resolve_model_path(model, cache_dir)
        model_dir, hub_id = (resolved, None) if Path(resolved).is_dir() else (None, resolved)
    spec = str(model) if isinstance(model, (str, os.PathLike)) else DEFAULT_MODEL if model is None else "<in-memory model>"
    context = RunContext(model, model_dir, hub_id, spec, tokenizer, overwrite, record_texts, cache_dir, device_map, seed,
                         progress, force, dtype)
    return entry.run(reqs, source, out, context, options)


def _is_unierase_output(folder) -> bool:
    """Whether ``folder`` holds an erasure (a ledger): a round may then write back into it. A plain
    or fine-tuned model (the user's original) is only replaced with ``overwrite``."""
    try:
        manifest = read_manifest(folder) if folder is not None else None
    except UniEraseError:
        return False
    return bool(manifest and manifest.get("ledger"))


def ask(questions: list[str] | str, *, model=None, tokenizer=None, max_new_tokens: int = 48, raw: bool = False,
        cache_dir=None, device_map=None, dtype=None) -> list[str]:
    """Greedy answers, rendered with the same prompt as the edit (special tokens hidden unless ``raw``)."""
    from .generation import check_lengths, generate_answers

    if isinstance(questions, str):
        questions = [questions]
    if max_new_tokens < 1:
        raise UniEraseError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")
    if model is None or isinstance(model, (str, os.PathLike)):
        model, tokenizer = load_checked_model(model, cache_dir=cache_dir, device_map=device_map, dtype=dtype)
    check_lengths(model, tokenizer, list(questions), max_new_tokens)
    return generate_answers(model, tokenizer, list(questions), max_new_tokens=max_new_tokens, raw=raw)


def statistics(*, model=None, layers: list[int] | None = None, stats_tokens: int | None = None, cache_dir=None,
               device_map=None, dtype=None, progress: bool = True) -> dict:
    """Compute (or find cached) the key statistics the edit of ``model`` needs, once per model, so
    that ``forget`` finds them. Started by ``accelerate launch`` or ``torchrun`` with several
    processes, each process runs its share of the corpus, the sums are combined, and the first
    process writes the cache entry (the same one a single process writes). Returns what was done."""
    import time

    from . import distributed
    from .edit.recipes import edit_config_for
    from .edit.stats import StatisticsCache, get_key_statistics
    from .edit.corpus import CORPUS_ID
    from .models.adapters import find_mlp_output
    from .models.loading import model_fingerprint
    from .storage import default_cache_dir

    distributed.join_process_group()
    rank, size = distributed.rank_and_size()
    started = time.perf_counter()
    model, tokenizer = load_checked_model(model, cache_dir=cache_dir, device_map=device_map, dtype=dtype)
    config, recipe = edit_config_for(model.config, cache_dir=cache_dir)
    adapter = find_mlp_output(model)
    layers = sorted(layers) if layers else config.resolved_layers(adapter.num_layers)
    num_tokens = stats_tokens or config.stats_tokens
    fingerprint = model_fingerprint(model)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    stats, seconds = get_key_statistics(model, tokenizer, adapter, layers, fingerprint=fingerprint, cache_dir=root,
                                        num_tokens=num_tokens, progress=progress and rank == 0)
    return {"layers": layers, "corpus_tokens": stats.count, "question_keys": stats.question_count,
            "answer_keys": stats.answer_count, "computed_s": round(seconds, 2),
            "total_s": round(time.perf_counter() - started, 2), "processes": size, "recipe": recipe.name if recipe else None,
            "cache": str(StatisticsCache(root).folder(fingerprint, CORPUS_ID, num_tokens))}


def plan(*, model=None, requests: int = 40, dtype=None, device: str | None = None, statistics_cached: bool = False,
         cache_dir=None):
    """What a UniErase round of ``requests`` requests will need on ``model`` (a directory, hub id or
    ``config.json``; ``None``: the default model), phase by phase, from its config alone: an
    ``edit.plan.Plan`` (``.table()``, ``.to_dict()``). ``dtype``: the weights' (``None``/"auto": the
    config's); ``device``: "cpu" or an accelerator ("cuda"; ``None``: cuda when present)."""
    import torch

    from .edit.plan import Shape, load_config, plan_round
    from .edit.recipes import edit_config_for
    from .models.loading import resolve_dtype

    config = load_config(model, cache_dir)
    if dtype in (None, "auto"):
        dtype = getattr(config, "torch_dtype", None) or getattr(config, "dtype", None) or torch.float32
    dtype = resolve_dtype(dtype) if isinstance(dtype, str) else dtype
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    edit_config, _ = edit_config_for(config, cache_dir=cache_dir)
    return plan_round(Shape.of(config), dtype=dtype, device=device, requests=requests, config=edit_config,
                      statistics_cached=statistics_cached, model=str(model or "default"))

