"""The Python API: the same verbs as the command line (``forget``, ``ask``, ``demo``, ``evaluate``…).

``forget`` reads the requests, checks where it will write, and hands both to the method
(``methods.METHODS``): UniErase (``edit.method.erase``) or a fine-tuning baseline.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .edit.editor import EditConfig
from .edit.method import ForgetResult
from .methods import RunContext, get_method
from .models.loading import DEFAULT_MODEL, load_model
from .requests import ForgetRequest, load_requests, parse_requests
from .rounds import read_manifest
from .storage import UniEraseError, check_output_dir
from .token.training import UnlearningTokenConfig

log = logging.getLogger(__name__)


def _as_requests(requests) -> tuple[list[ForgetRequest], str]:
    if isinstance(requests, (str, os.PathLike)):
        return load_requests(requests), str(requests)
    items = [r if isinstance(r, ForgetRequest) else None for r in requests]
    if all(items) and items:
        return list(items), "<python>"
    return parse_requests([r.to_dict() if isinstance(r, ForgetRequest) else r for r in requests]), "<python>"


def forget(requests, out: str | os.PathLike | None = None, *, model=None, tokenizer=None, method: str = "unierase",
           mode: str | None = None, scope: str = "auto", layers: list[int] | None = None, key_position: str = "auto",
           solver: str = "alphaedit",
           overwrite: bool = False, record_texts: bool = True, cache_dir=None, device_map=None, seed: int = 0,
           stats_tokens: int | None = None, max_passes: int | None = None, edit_config: EditConfig | None = None,
           token_config: UnlearningTokenConfig | None = None, progress: bool = True,
           answer_ids: list[list[int]] | None = None, settings: dict[str, dict] | None = None,
           **baseline_options) -> ForgetResult:
    """Erase ``requests`` (a JSONL path or a list of dicts/ForgetRequest) from ``model`` with ``method``
    (``methods.METHODS``: 'unierase' or a fine-tuning baseline, whose options go in ``baseline_options``).

    ``model`` is a directory, a hub id, ``None`` for the embedded default, or an already loaded
    model (then pass ``tokenizer`` too and ``out`` may be ``None`` to edit in memory only).
    Running it on a directory written by an earlier call continues sequentially from its state.
    ``scope``: 'fact', 'entity' or 'auto' for requests without their own ``scope`` (``edit.scope``).
    ``answer_ids``: the given model's own greedy answers to the requests (token ids, as
    ``generation.generate_answer_ids`` returns them, at least ``EditConfig.substitute_answer_tokens``
    long unless they end earlier), when the caller already has them — the edit otherwise generates
    them for its substitute answers. ``settings``: individual fields over the model's recipe,
    ``{"edit": {...}, "values": {...}, "entity_values": {...}}`` (``recipes.parse_settings`` reads
    the CLI's ``--set SECTION.FIELD=VALUE``).
    """
    entry = get_method(method)
    if entry.family == "edit" and baseline_options:
        raise UniEraseError(f"options {sorted(baseline_options)} only apply to the fine-tuning baselines")
    reqs, source = _as_requests(requests)
    given_dir = model if isinstance(model, (str, os.PathLike)) and Path(model).expanduser().is_dir() else None
    if out is not None:
        check_output_dir(out, overwrite, allow_same_as=given_dir if _is_unierase_output(given_dir) else None,
                         cache_dir=cache_dir)
    model_dir = hub_id = None
    if model is None or isinstance(model, (str, os.PathLike)):
        from .models.loading import resolve_model_path

        resolved = resolve_model_path(model, cache_dir)
        model_dir, hub_id = (resolved, None) if Path(resolved).is_dir() else (None, resolved)
    spec = str(model) if isinstance(model, (str, os.PathLike)) else DEFAULT_MODEL if model is None else "<in-memory model>"
    context = RunContext(model, model_dir, hub_id, spec, tokenizer, overwrite, record_texts, cache_dir, device_map, seed,
                         progress)
    if entry.family == "edit":
        options = dict(mode=mode, scope=scope, layers=layers, key_position=key_position, solver=solver,
                       stats_tokens=stats_tokens, max_passes=max_passes, edit_config=edit_config,
                       token_config=token_config, answer_ids=answer_ids, settings=settings)
    else:
        options = baseline_options
    return entry.run(reqs, source, out, context, **options)


def _is_unierase_output(folder) -> bool:
    """Whether ``folder`` holds an erasure (a ledger): a round may then write back into it. A plain
    or fine-tuned model (the user's original) is only replaced with ``overwrite``."""
    try:
        manifest = read_manifest(folder) if folder is not None else None
    except UniEraseError:
        return False
    return bool(manifest and manifest.get("ledger"))


def ask(questions: list[str] | str, *, model=None, tokenizer=None, max_new_tokens: int = 48, raw: bool = False,
        cache_dir=None, device_map=None) -> list[str]:
    """Greedy answers, rendered with the same prompt as the edit (special tokens hidden unless ``raw``)."""
    from .generation import check_lengths, generate_answers

    if isinstance(questions, str):
        questions = [questions]
    if max_new_tokens < 1:
        raise UniEraseError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")
    if model is None or isinstance(model, (str, os.PathLike)):
        model, tokenizer = load_model(model, cache_dir=cache_dir, device_map=device_map)
    check_lengths(model, tokenizer, list(questions), max_new_tokens)
    return generate_answers(model, tokenizer, list(questions), max_new_tokens=max_new_tokens, raw=raw)
