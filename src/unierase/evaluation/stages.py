"""The evaluation's resumable stages: each stage's per-item results in one JSON file, written
after every batch, with the fingerprint of what produced them."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import distributed
from ..measure import peak_memory_mb
from ..storage import UniEraseError, write_json_atomic

log = logging.getLogger(__name__)


def sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:16]


def jsonable(obj: Any) -> Any:
    """The value as it reads back from JSON (tuples become lists), so fingerprints compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def model_dir_fingerprint(path: str) -> dict:
    p = Path(path)
    info: dict = {"path": str(p.resolve()) if p.exists() else str(path)}
    if (p / "config.json").is_file():
        info["config_sha"] = hashlib.sha256((p / "config.json").read_bytes()).hexdigest()[:16]
        info["weights"] = sorted((f.name, f.stat().st_size) for f in p.glob("*.safetensors")) + \
            sorted((f.name, f.stat().st_size) for f in p.glob("*.bin"))
    return info


class StageStore:
    """Per-stage, per-item results stored as JSON under ``OUT/stages``: a stage whose fingerprint
    (model, data, settings) matches is skipped or resumed where it stopped; another fingerprint is
    an error, not a silent mix."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.timings: dict[str, float] = {}  # wall seconds per stage, summed over resumed runs
        self.cpu_timings: dict[str, float] = {}  # process CPU seconds per stage

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def load(self, name: str, fingerprint: dict) -> tuple[dict[int, Any], bool]:
        fingerprint = jsonable(fingerprint)
        path = self._path(name)
        if not path.is_file():
            return {}, False
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            log.warning("ignoring unreadable stage file %s", path)
            return {}, False
        if rec.get("fingerprint") != fingerprint:
            diff = sorted(k for k in set(fingerprint) | set(rec.get("fingerprint", {}))
                          if fingerprint.get(k) != rec.get("fingerprint", {}).get(k))
            raise UniEraseError(
                f"{path} was written by a different evaluation (differs in: {', '.join(diff)}); "
                "pass --overwrite to start over or choose another --out")
        self.timings[name] = rec.get("seconds", 0.0)
        self.cpu_timings[name] = rec.get("cpu_seconds", 0.0)
        return {int(k): v for k, v in rec.get("items", {}).items()}, bool(rec.get("complete"))

    def save(self, name: str, fingerprint: dict, items: dict[int, Any], complete: bool, seconds: float,
             cpu_seconds: float = 0.0) -> None:
        write_json_atomic(self._path(name), {
            "stage": name, "fingerprint": jsonable(fingerprint), "complete": complete, "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "items": {str(k): items[k] for k in sorted(items)},
        })

    def run(self, name: str, fingerprint: dict, n_items: int,
            compute: Callable[[list[int]], Iterator[tuple[list[int], list[Any]]]]) -> dict[int, Any]:
        items, complete = self.load(name, fingerprint)
        if complete and len(items) >= n_items:
            log.info("stage %s: already done", name)
            return items
        todo = [i for i in range(n_items) if i not in items]
        if distributed.rank_and_size()[1] > 1:
            return self._run_sharded(name, fingerprint, items, todo, compute)
        spent, cpu_spent = self.timings.get(name, 0.0), self.cpu_timings.get(name, 0.0)
        log.info("stage %s: %d of %d items to do%s", name, len(todo), n_items, " (resuming)" if items else "")
        t0, c0 = time.time(), time.process_time()
        for indices, values in compute(todo):
            items.update(zip(indices, values))
            self.save(name, fingerprint, items, False, spent + time.time() - t0, cpu_spent + time.process_time() - c0)
            log.info("stage %s: %d/%d items", name, len(items), n_items)
        seconds, cpu = spent + time.time() - t0, cpu_spent + time.process_time() - c0
        self.save(name, fingerprint, items, True, seconds, cpu)
        self.timings[name] = seconds
        self.cpu_timings[name] = cpu
        log.info("stage %s: done in %.1f s (peak memory %.0f MiB)", name, seconds, peak_memory_mb())
        return items

    def _run_sharded(self, name: str, fingerprint: dict, items: dict[int, Any], todo: list[int], compute) -> dict[int, Any]:
        """Several processes: each runs its share of ``todo`` into a stage file of its own (resumed
        like the whole stage), then every process merges all shares in item order and the first
        writes the whole stage file, as one process would have."""
        rank, size = distributed.rank_and_size()
        own = f"{name}.rank{rank}-of-{size}"
        mine, _ = self.load(own, fingerprint)
        t0 = time.time()
        rest = [i for i in distributed.shard(todo) if i not in mine]
        for indices, values in compute(rest) if rest else ():
            mine.update(zip(indices, values))
            self.save(own, fingerprint, mine, False, time.time() - t0)
        self.save(own, fingerprint, mine, True, time.time() - t0)
        distributed.barrier()
        for other in range(size):
            items.update(self.load(f"{name}.rank{other}-of-{size}", fingerprint)[0])
        seconds = self.timings.get(name, 0.0) + time.time() - t0
        distributed.barrier()  # every process has read every share before the first removes them
        if distributed.is_main():
            self.save(name, fingerprint, items, True, seconds)
            for other in range(size):
                self._path(f"{name}.rank{other}-of-{size}").unlink(missing_ok=True)
        distributed.barrier()
        self.timings[name] = seconds
        return items
