"""The one manifest schema: ``unierase_manifest.json`` beside every checkpoint unierase writes.

UniErase rounds (``api.forget``), the fine-tuning baselines (``baselines.run``) and target
fine-tuning (``baselines.finetune``) all build a ``Manifest``: a common, versioned header — which
method, which unierase, which start model, what made that model — and the method's own record
(UniErase: its rounds; fine-tuning: hyper-parameters, training curve, cost), written flat so a
reader finds ``manifest["rounds"]`` or ``manifest["hyperparameters"]`` at the top.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from .._version import __version__
from ..storage import UniEraseError

SCHEMA_VERSION = 1
"""Bumped when a field changes meaning; a manifest without ``schema`` predates the field (0)."""

HEADER = ("schema", "method", "unierase_version", "created", "base_model", "base_history")


@dataclass
class Manifest:
    method: str
    """'unierase', a baseline's name ('npo+gd', …) or 'finetune'."""
    base_model: dict
    """The model this record starts from: ``spec`` (as the user named it), ``fingerprint``
    (``models.loading.model_fingerprint``), ``architecture``."""
    record: dict
    """The method's own fields (UniErase: ``rounds``, ``token``, ``layers``…; fine-tuning:
    ``hyperparameters``, ``train``, ``timings_s``, ``peak_memory_mb``…)."""
    base_history: dict | None = None
    """The manifest of the checkpoint this one was made from, when another method made it."""
    unierase_version: str = __version__
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    schema: int = SCHEMA_VERSION

    def __post_init__(self):
        clash = set(self.record) & set(HEADER)
        if clash:
            raise UniEraseError(f"manifest record may not redefine header field(s) {sorted(clash)}")

    def to_dict(self) -> dict:
        out = {"schema": self.schema, "method": self.method, "unierase_version": self.unierase_version,
               "created": self.created, "base_model": self.base_model, **self.record}
        if self.base_history is not None:
            out["base_history"] = self.base_history
        return out

    @classmethod
    def from_dict(cls, data, source: str = "manifest") -> "Manifest":
        """Check a manifest read from ``source``; anything malformed names the file and the field."""
        if not isinstance(data, dict) or not isinstance(data.get("method"), str):
            raise UniEraseError(f"{source}: corrupt manifest (expected a JSON object with a 'method', got "
                                f"{json.dumps(data)[:40]})")
        schema = data.get("schema", 0)
        if not isinstance(schema, int) or schema > SCHEMA_VERSION:
            raise UniEraseError(f"{source}: field 'schema' is {schema!r}; this unierase reads manifests up to "
                                f"schema {SCHEMA_VERSION} (upgrade unierase)")
        if data["method"] == "unierase" and not isinstance(data.get("rounds"), list):
            raise UniEraseError(f"{source}: corrupt manifest (a unierase manifest without its list of rounds)")
        base = data.get("base_model")
        if isinstance(base, str):  # schema 0 baselines wrote the spec alone
            base = {"spec": base}
        if base is not None and not isinstance(base, dict):
            raise UniEraseError(f"{source}: field 'base_model' must be an object")
        history = data.get("base_history", data.get("previous"))  # schema 0 baselines: 'previous'
        record = {k: v for k, v in data.items() if k not in HEADER and k not in ("version", "unierase_version", "previous")}
        return cls(data["method"], base or {}, record, history,
                   str(data.get("unierase_version", data.get("version", "unknown"))),
                   str(data.get("created", "")), schema)


def runtime_info(model) -> dict:
    """The dtype(s) and devices of ``model``'s weights as a round ran it."""
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    devices = sorted({str(p.device) for p in model.parameters()})
    return {"dtype": dtypes[0] if len(dtypes) == 1 else dtypes, "devices": devices}


def base_model_info(model, spec, fingerprint: str | None = None) -> dict:
    """The ``base_model`` header of a model loaded from ``spec`` (a path, a hub id, or ``None`` = default);
    ``fingerprint`` when the caller already took it."""
    from ..models.loading import DEFAULT_MODEL, model_fingerprint

    return {"spec": str(spec) if spec is not None else DEFAULT_MODEL,
            "fingerprint": fingerprint or model_fingerprint(model), "architecture": type(model).__name__}
