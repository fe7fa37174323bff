"""Every unlearning method by name, in one registry: UniErase and the eight fine-tuning baselines.

``api.forget(..., method=NAME)`` looks the method up here and hands it the requests and a
``RunContext`` (the model, where to write, the shared switches); ``unierase methods`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .storage import UniEraseError


@dataclass(frozen=True)
class RunContext:
    """What every method receives besides the requests and its own options."""

    model: object
    """The model as the caller gave it: a spec (path, hub id, ``None``) or a loaded model."""
    model_dir: Path | None
    """The resolved local directory of the model (``None`` for a hub id or a loaded model)."""
    hub_id: str | None
    spec: str
    """How the manifest names the start model."""
    tokenizer: object = None
    overwrite: bool = False
    record_texts: bool = True
    cache_dir: object = None
    device_map: object = None
    seed: int = 0
    progress: bool = True


@dataclass(frozen=True)
class Method:
    name: str
    family: str
    """'edit' (UniErase) or 'fine-tuning' (the baselines)."""
    description: str
    run: Callable[..., object]
    """(requests, source, out, context, **options) → the method's result (``ForgetResult``,
    ``BaselineResult``); ``source`` names where the requests came from, for messages."""


def _unierase(requests, source, out, context: RunContext, **options):
    from .edit.method import erase

    return erase(requests, source, out, context, **options)


def _baseline(name: str) -> Callable[..., object]:
    def run(requests, source, out, context: RunContext, **options):
        from .baselines import run_baseline

        return run_baseline(name, context.model_dir or context.hub_id or context.model, requests, out,
                            overwrite=context.overwrite, cache_dir=context.cache_dir, seed=context.seed,
                            record_texts=context.record_texts, progress=context.progress, tokenizer=context.tokenizer,
                            **options)

    return run


def _registry() -> dict[str, Method]:
    from .baselines.methods import METHODS as BASELINES

    methods = {"unierase": Method("unierase", "edit", "closed-form edit: each question starts its answer with the "
                                  "unlearning token, which continues as a refusal", _unierase)}
    for name, cls in BASELINES.items():  # a baseline is a forget term and a regulariser, each documented
        parts = [base.__doc__.strip().rstrip(".") for base in cls.__bases__ if base.__doc__]
        methods[name] = Method(name, "fine-tuning", "; ".join(parts), _baseline(name))
    return methods


METHODS: dict[str, Method] = _registry()
"""Every method, by its CLI name (``unierase forget --method NAME``)."""


def get_method(name: str) -> Method:
    """Look a method up; a baseline's name accepts case and ``_``/``-``/space separators (``NPO_GD``)."""
    key = name.strip().lower()
    if key == "unierase":
        return METHODS[key]
    from .baselines.methods import get_method as get_baseline

    try:
        return METHODS[get_baseline(name).name]
    except UniEraseError:
        raise UniEraseError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}") from None
