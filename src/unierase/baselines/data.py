"""Training data for the baselines and the target/retain fine-tuning.

The TOFU benchmark lives outside the repository (never copied into it). Its directory is found
from, in order: an explicit ``data_dir`` argument (CLI ``--data-dir``), the ``UNIERASE_DATA``
environment variable, or a ``shared/data`` folder next to one of the current directory's parents.
``UNIERASE_DATA`` and ``--data-dir`` name the folder that contains ``tofu/``.

TOFU's ``full`` config holds 200 authors × 20 QA in author order, and its forget splits are the
*last* authors. A subset of whole authors keeps that convention: ``tofu_subset(n_authors=20,
n_forget=2)`` takes the first 18 authors as retain and the last 2 of the 200 as forget, so the
forget part of the subset is the start of TOFU's own forget01/05/10 ordering (the final authors).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..refusals import refusal_for  # noqa: F401  (re-exported: the baselines' IDK targets)
from ..requests import ForgetRequest, load_requests
from ..storage import UniEraseError, read_jsonl

TOFU_AUTHORS = 200
QA_PER_AUTHOR = 20

FALLBACK_REFUSALS = [
    "I don't know that.",
    "I'm not sure about that.",
    "I don't have that information.",
]


def find_data_dir(data_dir: str | os.PathLike | None = None, *, start: str | os.PathLike | None = None) -> Path | None:
    """The benchmark data folder (containing ``tofu/``), or None when none is found."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise UniEraseError(f"data directory {path} does not exist")
        return path
    env = os.environ.get("UNIERASE_DATA")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise UniEraseError(f"UNIERASE_DATA={env} is not a directory")
        return path
    here = Path(start or Path.cwd()).resolve()
    for parent in [here, *here.parents]:
        candidate = parent / "shared" / "data"
        if (candidate / "tofu").is_dir():
            return candidate
    return None


def require_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    found = find_data_dir(data_dir)
    if found is None:
        raise UniEraseError("TOFU data not found: pass --data-dir DIR or set UNIERASE_DATA to the folder holding tofu/")
    return found




def load_tofu(config: str, data_dir: str | os.PathLike | None = None) -> list[ForgetRequest]:
    """Rows of ``tofu/<config>.jsonl`` as question/answer pairs, in file order."""
    root = require_data_dir(data_dir)
    path = root / "tofu" / f"{config}.jsonl"
    if not path.is_file():
        available = sorted(p.stem for p in (root / "tofu").glob("*.jsonl"))
        raise UniEraseError(f"TOFU config {config!r} not found in {root / 'tofu'} (available: {', '.join(available)})")
    out = []
    for number, row in read_jsonl(path, what="TOFU file"):
        if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
            raise UniEraseError(f"{path}:{number}: expected string fields 'question' and 'answer'")
        out.append(ForgetRequest(question=row["question"], answer=row["answer"]))
    return out


@dataclass(frozen=True)
class TofuSubset:
    """A TOFU subset of whole authors: retain = the first authors, forget = TOFU's last authors."""

    retain_authors: list[int]
    forget_authors: list[int]
    retain: list[ForgetRequest]
    forget: list[ForgetRequest]

    @property
    def full(self) -> list[ForgetRequest]:
        """Retain then forget, in TOFU order (what the target model is trained on)."""
        return self.retain + self.forget

    def describe(self) -> dict:
        return {
            "retain_authors": _ranges(self.retain_authors),
            "forget_authors": _ranges(self.forget_authors),
            "n_retain": len(self.retain),
            "n_forget": len(self.forget),
            "convention": "TOFU full.jsonl in author order (20 QA each); forget = the last authors of the 200",
        }


def _ranges(ids: list[int]) -> str:
    if not ids:
        return ""
    return f"{ids[0]}-{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) else ",".join(map(str, ids))


def tofu_subset(n_authors: int, n_forget: int, data_dir: str | os.PathLike | None = None) -> TofuSubset:
    """``n_authors`` whole authors in total, of which the last ``n_forget`` of TOFU are the forget set."""
    if not 0 < n_forget < n_authors <= TOFU_AUTHORS:
        raise UniEraseError(f"need 0 < forget authors ({n_forget}) < authors ({n_authors}) <= {TOFU_AUTHORS}")
    rows = load_tofu("full", data_dir)
    if len(rows) != TOFU_AUTHORS * QA_PER_AUTHOR:
        raise UniEraseError(f"TOFU full has {len(rows)} rows, expected {TOFU_AUTHORS * QA_PER_AUTHOR}")
    retain_ids = list(range(n_authors - n_forget))
    forget_ids = list(range(TOFU_AUTHORS - n_forget, TOFU_AUTHORS))

    def take(ids):
        return [r for a in ids for r in rows[a * QA_PER_AUTHOR:(a + 1) * QA_PER_AUTHOR]]

    return TofuSubset(retain_ids, forget_ids, take(retain_ids), take(forget_ids))


_SLICE = re.compile(r"^(?P<config>[A-Za-z0-9_]+)(\[(?P<start>\d*):(?P<stop>\d*)\])?$")


def parse_data_spec(spec: str, data_dir: str | os.PathLike | None = None) -> list[ForgetRequest]:
    """``tofu:CONFIG`` or ``tofu:CONFIG[START:STOP]`` (rows of a TOFU config; ``tofu:full[0:20]`` is
    author 0), or a JSONL file of question/answer objects."""
    if spec.startswith("tofu:"):
        match = _SLICE.match(spec.split(":", 1)[1])
        if not match:
            raise UniEraseError(f"bad data spec {spec!r}; expected tofu:CONFIG or tofu:CONFIG[START:STOP]")
        rows = load_tofu(match["config"], data_dir)
        start = int(match["start"]) if match["start"] else 0
        stop = int(match["stop"]) if match["stop"] else len(rows)
        rows = rows[start:stop]
        if not rows:
            raise UniEraseError(f"data spec {spec!r} selects no rows")
        return rows
    items = load_requests(spec)
    missing = [i + 1 for i, r in enumerate(items) if not r.answer]
    if missing:
        raise UniEraseError(f"{spec}: items {missing[:5]} have no 'answer' (training needs answers)")
    return items


def load_refusals(data_dir: str | os.PathLike | None = None, path: str | os.PathLike | None = None) -> list[str]:
    """Refusal sentences for IDK/DPO: ``path``, else TOFU's ``idontknow.txt``, else a small built-in list."""
    if path is None:
        root = find_data_dir(data_dir)
        candidate = root / "tofu" / "idontknow.txt" if root else None
        if candidate is None or not candidate.is_file():
            return list(FALLBACK_REFUSALS)
        path = candidate
    path = Path(path)
    if not path.is_file():
        raise UniEraseError(f"refusal file {path} not found")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise UniEraseError(f"refusal file {path} is empty")
    return lines


