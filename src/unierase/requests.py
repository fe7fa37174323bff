"""Forget requests: the JSONL schema and a parser whose errors name the file, line and field."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .storage import UniEraseError, read_jsonl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForgetRequest:
    """One piece of knowledge to erase.

    ``question`` is asked to the model; ``answer`` (optional) is the answer being erased, used by
    the baselines and for reporting; ``subject`` (optional) is a substring of the question whose
    last token carries the edit key (found automatically when absent); ``scope`` (optional) is
    'fact' (erase this question, keep the entity's other facts) or 'entity' (erase what the model
    says about the entity), see ``edit.scope``; ``None`` = the round's scope. ``paraphrases``
    (optional): rewordings of the question, which ``unierase audit`` asks too.
    """

    question: str
    answer: str | None = None
    subject: str | None = None
    scope: str | None = None
    paraphrases: tuple[str, ...] | None = None

    def digest(self) -> str:
        """A stable hash of the request (recorded in the manifest even when texts are not)."""
        fields = asdict(self)
        for name in ("scope", "paraphrases"):  # requests without them hash as they did before they existed
            if fields[name] is None:
                del fields[name]
        if "paraphrases" in fields:
            fields["paraphrases"] = list(fields["paraphrases"])
        payload = json.dumps(fields, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if "paraphrases" in out:
            out["paraphrases"] = list(out["paraphrases"])
        return out


KNOWN_FIELDS = ("question", "answer", "subject", "scope", "paraphrases")

SCOPES = ("auto", "fact", "entity")
"""Request scopes (``edit.scope``); 'auto' = entity when several requests name the same entity."""


def _validate(item: dict, where: str) -> ForgetRequest:
    if not isinstance(item, dict):
        raise UniEraseError(f"{where}: expected a JSON object, got {type(item).__name__}")
    unknown = sorted(set(item) - set(KNOWN_FIELDS))
    if unknown:
        log.warning("%s: unknown field(s) %s ignored (known: %s)", where, ", ".join(map(repr, unknown)), ", ".join(KNOWN_FIELDS))
    question = item.get("question")
    if question is None:
        raise UniEraseError(f"{where}: missing required field 'question'")
    if not isinstance(question, str) or not question.strip():
        raise UniEraseError(f"{where}: field 'question' must be a non-empty string")
    for field in ("answer", "subject", "scope"):
        if item.get(field) is not None and not isinstance(item[field], str):
            raise UniEraseError(f"{where}: field '{field}' must be a string")
    paraphrases = item.get("paraphrases")
    if paraphrases is not None:
        if isinstance(paraphrases, str):
            paraphrases = [paraphrases]
        if not isinstance(paraphrases, list) or not all(isinstance(p, str) and p.strip() for p in paraphrases):
            raise UniEraseError(f"{where}: field 'paraphrases' must be a list of non-empty strings")
        if any(len(p) > MAX_FIELD_CHARS for p in paraphrases):
            raise UniEraseError(f"{where}: a paraphrase is longer than {MAX_FIELD_CHARS:,} characters")
        paraphrases = tuple(paraphrases)
    scope = item.get("scope")
    if scope is not None and scope not in SCOPES:
        raise UniEraseError(f"{where}: field 'scope' is {scope!r}; choose from {', '.join(SCOPES)}")
    for field in KNOWN_FIELDS:
        value = item.get(field)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise UniEraseError(f"{where}: field '{field}' holds an invalid character (a lone UTF-16 surrogate)") from None
            if len(value) > MAX_FIELD_CHARS:
                raise UniEraseError(f"{where}: field '{field}' is {len(value):,} characters long (at most {MAX_FIELD_CHARS:,})")
    subject = item.get("subject")
    if subject is not None:
        if not subject.strip():
            raise UniEraseError(f"{where}: field 'subject' is empty")
        if subject not in question:
            raise UniEraseError(f"{where}: field 'subject' {subject!r} does not occur in the question {question!r}")
    return ForgetRequest(question=question, answer=item.get("answer"), subject=subject, scope=scope,
                         paraphrases=paraphrases)


MAX_FIELD_CHARS = 20_000
"""Longest question, answer or subject accepted (far beyond a question; a 1 MB "question" would
otherwise only fail deep inside the model, allocating tens of GB for its attention)."""


def _warn_duplicates(requests: list[ForgetRequest], places: list[str]) -> None:
    seen: dict[str, str] = {}
    for r, where in zip(requests, places):
        if r.question in seen:
            log.warning("%s: the same question as %s (%r); it is erased once either way", where, seen[r.question], r.question[:60])
        else:
            seen[r.question] = where


def parse_requests(items: list[dict], source: str = "<requests>") -> list[ForgetRequest]:
    """Validate already-parsed request dicts (the Python API's entry point)."""
    if not items:
        raise UniEraseError(f"{source}: no forget requests")
    places = [f"{source}: item {i + 1}" for i in range(len(items))]
    requests = [_validate(item, where) for item, where in zip(items, places)]
    _warn_duplicates(requests, places)
    return requests


def load_requests(path: str | Path) -> list[ForgetRequest]:
    """Read a JSONL file of forget requests (blank lines are skipped)."""
    rows = read_jsonl(path, what="requests file")
    places = [f"{path}:{number}" for number, _ in rows]
    requests = [_validate(item, where) for (_, item), where in zip(rows, places)]
    if not requests:
        raise UniEraseError(f"{path}: the file contains no forget requests")
    _warn_duplicates(requests, places)
    return requests


def as_requests(requests) -> tuple[list[ForgetRequest], str]:
    """(requests, where they came from) from a JSONL path or a list of dicts / ``ForgetRequest``."""
    if isinstance(requests, (str, os.PathLike)):
        return load_requests(requests), str(requests)
    items = [r if isinstance(r, ForgetRequest) else None for r in requests]
    if all(items) and items:
        return list(items), "<python>"
    return parse_requests([r.to_dict() if isinstance(r, ForgetRequest) else r for r in requests]), "<python>"
