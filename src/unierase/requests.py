"""Forget requests: the JSONL schema and a parser whose errors name the file, line and field."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .storage import UniEraseError, read_jsonl


@dataclass(frozen=True)
class ForgetRequest:
    """One piece of knowledge to erase.

    ``question`` is asked to the model; ``answer`` (optional) is the answer being erased, used by
    the baselines and for reporting; ``subject`` (optional) is a substring of the question whose
    last token carries the edit key (found automatically when absent).
    """

    question: str
    answer: str | None = None
    subject: str | None = None

    def digest(self) -> str:
        """A stable hash of the request (recorded in the manifest even when texts are not)."""
        payload = json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _validate(item: dict, where: str) -> ForgetRequest:
    if not isinstance(item, dict):
        raise UniEraseError(f"{where}: expected a JSON object, got {type(item).__name__}")
    question = item.get("question")
    if question is None:
        raise UniEraseError(f"{where}: missing required field 'question'")
    if not isinstance(question, str) or not question.strip():
        raise UniEraseError(f"{where}: field 'question' must be a non-empty string")
    for field in ("answer", "subject"):
        if item.get(field) is not None and not isinstance(item[field], str):
            raise UniEraseError(f"{where}: field '{field}' must be a string")
    subject = item.get("subject")
    if subject is not None:
        if not subject.strip():
            raise UniEraseError(f"{where}: field 'subject' is empty")
        if subject not in question:
            raise UniEraseError(f"{where}: field 'subject' {subject!r} does not occur in the question {question!r}")
    return ForgetRequest(question=question, answer=item.get("answer"), subject=subject)


def parse_requests(items: list[dict], source: str = "<requests>") -> list[ForgetRequest]:
    """Validate already-parsed request dicts (the Python API's entry point)."""
    if not items:
        raise UniEraseError(f"{source}: no forget requests")
    return [_validate(item, f"{source}: item {i + 1}") for i, item in enumerate(items)]


def load_requests(path: str | Path) -> list[ForgetRequest]:
    """Read a JSONL file of forget requests (blank lines are skipped)."""
    requests = [_validate(item, f"{path}:{number}") for number, item in read_jsonl(path, what="requests file")]
    if not requests:
        raise UniEraseError(f"{path}: the file contains no forget requests")
    return requests
