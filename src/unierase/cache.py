"""The one cache: artefacts computed once per model, stored under content-addressed keys.

An entry lives at ``<root>/<kind>/<key>/`` (``root``: ``storage.default_cache_dir()`` unless given).
Its key is a hash of everything the artefact depends on — the model's fingerprint, the settings,
and the source code of the modules that compute it (``code_digest``) — so a change of any of them
is a new entry and nothing is invalidated by hand. An unreadable entry is logged and recomputed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from pathlib import Path
from types import ModuleType

from .storage import default_cache_dir, save_tensors_atomic, write_json_atomic

log = logging.getLogger(__name__)


def code_digest(*modules: ModuleType) -> str:
    """A hash of the modules' source: part of the key of every artefact they compute."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(inspect.getsource(module).encode("utf-8"))
    return digest.hexdigest()[:16]


def content_key(*parts) -> str:
    """A stable hash of JSON-able ``parts`` (dataclass configs as their ``to_dict()``)."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=lambda o: o.to_dict() if hasattr(o, "to_dict") else str(o))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


class Cache:
    """``entry(kind, key)`` folders and the atomic read/write of tensors and JSON in them."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def entry(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def load_tensors(self, kind: str, key: str, name: str = "tensors.safetensors") -> dict | None:
        path = self.entry(kind, key) / name
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own types for truncated or foreign files
            log.warning("ignoring unreadable cache file %s (%s)", path, error)
            return None

    def save_tensors(self, kind: str, key: str, tensors: dict, name: str = "tensors.safetensors") -> Path:
        path = self.entry(kind, key) / name
        save_tensors_atomic(path, {k: v.contiguous() for k, v in tensors.items()})
        return path

    def load_json(self, kind: str, key: str, name: str = "data.json"):
        path = self.entry(kind, key) / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            log.warning("ignoring unreadable cache file %s (%s)", path, error)
            return None

    def save_json(self, kind: str, key: str, data, name: str = "data.json") -> Path:
        path = self.entry(kind, key) / name
        write_json_atomic(path, data)
        return path
