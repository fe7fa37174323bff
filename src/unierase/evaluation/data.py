"""TOFU data: locate it, read one configuration, check its columns.

The location is a directory holding ``<config>.jsonl`` files (one per Hugging Face configuration
of ``locuslab/TOFU``, the hub's rows and column names), or a directory whose ``tofu/`` child is
one, or a hub dataset id. It comes from the ``data`` argument (``--data-dir``), else from the
``UNIERASE_DATA`` environment variable, else the hub id ``locuslab/TOFU``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..storage import UniEraseError, read_jsonl

DATA_ENV = "UNIERASE_DATA"
DEFAULT_HUB_ID = "locuslab/TOFU"

FORGET_SPLITS = ("forget01", "forget05", "forget10")

SET_NAMES = ("forget", "retain", "real_authors", "world_facts")
"""The four TOFU evaluation sets, in report order."""

SET_TITLES = {"forget": "Forget", "retain": "Retain", "real_authors": "Real authors", "world_facts": "World facts"}


def set_config(set_name: str, forget_split: str) -> str:
    """The TOFU configuration that holds an evaluation set."""
    if set_name == "forget":
        return f"{forget_split}_perturbed"
    return {"retain": "retain_perturbed", "real_authors": "real_authors_perturbed",
            "world_facts": "world_facts_perturbed"}[set_name]


def required_columns(set_name: str, *, paraphrased_question: bool = False) -> tuple[str, ...]:
    cols = ["question", "answer", "perturbed_answer"]
    if set_name in ("forget", "retain"):
        cols.append("paraphrased_answer")
    if set_name == "forget" and paraphrased_question:
        cols.append("paraphrased_question")
    return tuple(cols)


@dataclass
class DataSource:
    """Where TOFU configurations are read from: a local directory or a hub dataset id."""

    local_dir: Path | None = None
    hub_id: str | None = None

    def describe(self) -> str:
        return str(self.local_dir) if self.local_dir is not None else f"hub:{self.hub_id}"

    def origin(self, config: str) -> str:
        if self.local_dir is not None:
            return str(self.local_dir / f"{config}.jsonl")
        return f"{self.hub_id} (config {config})"

    def load(self, config: str) -> list[dict]:
        if self.local_dir is not None:
            return _read_jsonl(self.local_dir / f"{config}.jsonl")
        return _read_hub(self.hub_id, config)

    def refusals(self) -> list[str]:
        """TOFU's list of refusal sentences (``idontknow.txt``), empty when not available locally."""
        if self.local_dir is None:
            return []
        for name in ("idontknow.txt", "idontknow.jsonl"):
            path = self.local_dir / name
            if path.is_file():
                return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return []


def resolve_data(data: str | os.PathLike | None = None) -> DataSource:
    """Turn ``--data-dir`` / ``$UNIERASE_DATA`` / the default hub id into a :class:`DataSource`."""
    spec = data if data is not None else os.environ.get(DATA_ENV) or DEFAULT_HUB_ID
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "tofu").is_dir() and not any(path.glob("*.jsonl")):
            path = path / "tofu"
        return DataSource(local_dir=path)
    if path.exists():
        raise UniEraseError(f"data location {path} is not a directory")
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") != 1
    if looks_like_path:
        raise UniEraseError(f"data directory {text} does not exist (set --data-dir or ${DATA_ENV})")
    return DataSource(hub_id=text)


def _read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl(path, what="TOFU split file")]


def _read_hub(hub_id: str, config: str) -> list[dict]:
    try:
        import datasets

        ds = datasets.load_dataset(hub_id, config, split="train")
    except Exception as err:  # noqa: BLE001 - any hub/network failure becomes one clear line
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UniEraseError(
            f"cannot load TOFU config {config} from the hub dataset {hub_id}: {first} "
            f"(pass --data-dir or set ${DATA_ENV} to a local copy)"
        ) from err
    return [dict(row) for row in ds]


@dataclass
class EvalSet:
    """One evaluation set's rows (already cut to ``ds_size``) and where they came from."""

    name: str
    config: str
    origin: str
    rows: list[dict] = field(default_factory=list)
    total_rows: int = 0

    @property
    def n_perturbed(self) -> int:
        return len(self.rows[0]["perturbed_answer"]) if self.rows else 0


def load_set(source: DataSource, set_name: str, forget_split: str, *, ds_size: int | None = None,
             paraphrased_question: bool = False) -> EvalSet:
    """Read and check one evaluation set. Errors name the file, the row and the column."""
    if forget_split not in FORGET_SPLITS:
        raise UniEraseError(f"unknown forget split {forget_split!r}; choose one of {', '.join(FORGET_SPLITS)}")
    config = set_config(set_name, forget_split)
    origin = source.origin(config)
    rows = source.load(config)
    if not rows:
        raise UniEraseError(f"TOFU split file {origin} is empty (0 rows)")
    columns = required_columns(set_name, paraphrased_question=paraphrased_question)
    n_pert = None
    for index, row in enumerate(rows):
        for col in columns:
            value = row.get(col)
            if value is None:
                raise UniEraseError(f"{origin}: row {index} has no column '{col}' (needed for the {set_name} set)")
            if col == "perturbed_answer":
                if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                    raise UniEraseError(f"{origin}: row {index}, column 'perturbed_answer' must be a non-empty list of strings")
                if n_pert is None:
                    n_pert = len(value)
                elif len(value) != n_pert:
                    raise UniEraseError(
                        f"{origin}: row {index}, column 'perturbed_answer' has {len(value)} answers, earlier rows {n_pert}")
            elif not isinstance(value, str):
                raise UniEraseError(f"{origin}: row {index}, column '{col}' must be a string")
    total = len(rows)
    if ds_size is not None:
        if ds_size <= 0:
            raise UniEraseError(f"ds_size must be positive, got {ds_size}")
        rows = rows[:ds_size]
    return EvalSet(set_name, config, origin, rows, total)


def load_holdout(source: DataSource, forget_split: str, *, ds_size: int | None = None) -> EvalSet:
    """TOFU's holdout set of the forget split's size (``holdout01`` for ``forget01``): questions and
    answers of authors the TOFU model was never trained on, the non-members of membership inference."""
    config = "holdout" + forget_split[len("forget"):]
    origin = source.origin(config)
    rows = source.load(config)
    if not rows:
        raise UniEraseError(f"TOFU split file {origin} is empty (0 rows)")
    for index, row in enumerate(rows):
        for col in ("question", "answer"):
            if not isinstance(row.get(col), str):
                raise UniEraseError(f"{origin}: row {index} has no string column '{col}' (needed for the holdout set)")
    total = len(rows)
    return EvalSet("holdout", config, origin, rows[:ds_size] if ds_size else rows, total)
