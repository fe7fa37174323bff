"""The erasure ledger: an append-only, hash-chained record of every round applied to a model.

``unierase_ledger.jsonl`` in each model directory holds one JSON object per line — one per erasure
round (any method) and per revert. Each entry names the SHA-256 of the entry before it (``prev``)
and its own (``hash``, over the entry's canonical JSON without ``hash``); the manifest beside it
records the number of entries and the last hash. Reading checks all of it, so an edited, reordered,
removed or truncated entry is an error on every load, not a silent history.

The revert data of each erasure entry (``deltas.encode``: how to undo the weight change, plus the
small files it replaced) lives in ``unierase_deltas/``; the entry records its checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch

from .deltas import tensor_digest
from ..models.loading import full_state_dict
from ..storage import UniEraseError

LEDGER_FILE = "unierase_ledger.jsonl"
DELTA_DIR = "unierase_deltas"
SCHEMA = 1
GENESIS = "0" * 64


def canonical(entry: dict) -> bytes:
    return json.dumps(entry, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def entry_hash(entry: dict) -> str:
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def weights_digests(model) -> dict[str, str]:
    """Per-tensor SHA-256 of the model's state dict (tied tensors appear under each name)."""
    return {name: tensor_digest(t) for name, t in full_state_dict(model).items()}


def combined_digest(digests: dict[str, str]) -> str:
    """One SHA-256 for the whole model, from its per-tensor digests."""
    return hashlib.sha256(canonical(dict(sorted(digests.items())))).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_ledger(folder: str | os.PathLike, head: dict | None) -> list[dict]:
    """The entries of ``folder``'s ledger, checked against each other and against ``head`` (the
    manifest's ``ledger`` record). Any inconsistency is a ``UniEraseError`` naming the file and line."""
    path = Path(folder) / LEDGER_FILE
    if not path.exists():
        if head:
            raise UniEraseError(f"{path} is missing, but the manifest records a ledger of {head.get('entries')} "
                                "entries; the history was removed")
        return []
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as err:
        raise UniEraseError(f"{path}: cannot read the ledger ({err.strerror})") from None
    if lines and lines[-1] == b"":
        lines.pop()
    else:
        raise UniEraseError(f"{path}: the last entry is incomplete (the file was truncated)")
    entries: list[dict] = []
    previous = GENESIS
    for number, raw in enumerate(lines, start=1):
        where = f"{path}:{number}"
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UniEraseError(f"{where}: not a valid ledger entry (truncated or corrupted)") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
            raise UniEraseError(f"{where}: not a valid ledger entry (no hash)")
        if entry.get("index") != number - 1:
            raise UniEraseError(f"{where}: entry index {entry.get('index')!r}, expected {number - 1} (entries removed or reordered)")
        if entry.get("prev") != previous:
            raise UniEraseError(f"{where}: does not follow the entry before it (the chain is broken)")
        if entry_hash(entry) != entry["hash"]:
            raise UniEraseError(f"{where}: the entry's content does not match its hash (it was altered)")
        previous = entry["hash"]
        entries.append(entry)
    if head is None:
        raise UniEraseError(f"{path} exists but the manifest beside it records no ledger (the manifest was replaced)")
    if head.get("entries") != len(entries) or head.get("head") != previous:
        raise UniEraseError(f"{path}: {len(entries)} entries ending in {previous[:12]}, but the manifest records "
                            f"{head.get('entries')} ending in {str(head.get('head'))[:12]} (entries were removed or added)")
    return entries


def append(entries: list[dict], entry: dict) -> dict:
    """``entry`` chained after ``entries`` (index, prev, schema, time and hash filled in)."""
    entry = {"schema": SCHEMA, "index": len(entries), "prev": entries[-1]["hash"] if entries else GENESIS,
             "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **entry}
    entry["hash"] = entry_hash(entry)
    return entry


def head_of(entries: list[dict]) -> dict:
    """The manifest's record of the ledger."""
    return {"file": LEDGER_FILE, "entries": len(entries), "head": entries[-1]["hash"] if entries else GENESIS}


def ledger_text(entries: list[dict]) -> str:
    return "".join(canonical(e).decode("utf-8") + "\n" for e in entries)


def effective_rounds(entries: list[dict]) -> list[dict]:
    """The erasure entries in force, in order (a revert to round R drops rounds R and later)."""
    live: list[dict] = []
    for entry in entries:
        if entry.get("kind") == "erase":
            live.append(entry)
        elif entry.get("kind") == "revert":
            live = live[: int(entry["to_round"]) - 1]
    return live


def round_status(entries: list[dict]) -> dict[int, str]:
    """Entry index → 'in force' or 'reverted (entry N)' for every erasure entry."""
    status: dict[int, str] = {}
    live: list[dict] = []
    for entry in entries:
        if entry.get("kind") == "erase":
            live.append(entry)
            status[entry["index"]] = "in force"
        elif entry.get("kind") == "revert":
            for gone in live[int(entry["to_round"]) - 1:]:
                status[gone["index"]] = f"reverted (entry {entry['index']})"
            live = live[: int(entry["to_round"]) - 1]
    return status


def delta_path(folder: str | os.PathLike, index: int) -> Path:
    return Path(folder) / DELTA_DIR / f"entry-{index:04d}.safetensors"


def files_dir(folder: str | os.PathLike, index: int) -> Path:
    """The small files (config, tokenizer, manifest) an entry replaced, as they were before it."""
    return Path(folder) / DELTA_DIR / f"entry-{index:04d}.files"


def non_finite(model, tensors: dict | None = None) -> list[str]:
    """Names of floating-point parameters or buffers holding NaN or infinity (``tensors``: the
    model's full state dict, where the caller has read it already)."""
    tensors = full_state_dict(model) if tensors is None else tensors
    return [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
