"""Scope of a request: erase one fact, or everything the model says about an entity.

``fact``: the request's question (and close rewordings) refuse; the entity's other facts, and
relation-neutral questions about it, are kept (the edit's soft constraint preserves them).

``entity``: every question about the entity refuses. The requests naming one entity form one
group: they share one key position (the entity's last token: the ``subject`` when given, else the
name found once across the group) and one target (a single δ at the last edited layer for all of
them), and a few relation-neutral questions about the entity ("Tell me about X.") join the group
as targets rather than as preserved keys.

``auto`` (the default): ``entity`` for a request about a person that other requests of the round
name too, ``fact`` otherwise. Several questions about one person read as "forget this person"
(a right-to-be-forgotten request); two questions about Japan (its capital, its currency) read as
two facts to correct, not "forget Japan"; and a single question, also one naming a person ("When
was X born?"), most often corrects or removes that one fact. ``"scope": "entity"`` (or
``--scope entity``) erases any entity, from one question or several.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ..requests import SCOPES, ForgetRequest
from .prompts import NEUTRAL_TEMPLATES

_NAME = re.compile(r"[A-Z][\w’'.-]*(?:\s+(?:(?:of|the|and|de|da|van|von|al|bin|la|le)\s+)?[A-Z][\w’'.-]*)*")
_POSSESSIVE = re.compile(r"(?:['’]s|['’])$")


def name_spans(question: str) -> list[str]:
    """Capitalised names in ``question`` (possessive endings and trailing dots removed), the
    question's first word excluded unless it starts a longer name."""
    names = []
    for m in _NAME.finditer(question):
        # a possessive ends a name: "Nikolai Abilov's LGBTQ+ identity" names "Nikolai Abilov" and "LGBTQ"
        parts = [_POSSESSIVE.sub("", p).rstrip(".") for p in re.split(r"(?<=['’]s)\s+", m.group(0))]
        for k, text in enumerate(parts):
            if m.start() == 0 and k == 0 and " " not in text:  # "What", "Can": a lone first word
                continue
            if text:
                names.append(text)
    return names


def _names(name: str, question: str) -> bool:
    """Whether ``question`` names ``name`` as whole words ("Kuwait" is not in "Al-Kuwaiti")."""
    return re.search(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])", question) is not None


def shared_entities(requests: list[ForgetRequest]) -> list[str | None]:
    """Per request: the entity it shares with other requests of the round, else ``None``.

    A request's ``subject`` is its entity. Otherwise its candidate names (``name_spans``, also their
    trailing word sequences: "author Basil Mahfouz Al-Kuwaiti" → "Basil Mahfouz Al-Kuwaiti") are
    counted over all questions; the candidate named by the most other requests wins (ties: the
    longer). An entity counts as shared only when at least two requests choose it: a date's
    country named in passing by a question about someone else does not make a group.
    """
    chosen: list[str | None] = []
    for i, r in enumerate(requests):
        if r.subject:
            chosen.append(r.subject)
            continue
        names = set()
        for name in name_spans(r.question):
            words = name.split()
            names.update(" ".join(words[k:]) for k in range(len(words)))
        best, best_key = None, (0, 0)
        for name in sorted(names):
            count = sum(1 for j, o in enumerate(requests) if j != i and _names(name, o.question))
            if count and (count, len(name)) > best_key:
                best, best_key = name, (count, len(name))
        chosen.append(best)
    counts: dict[str, int] = {}
    for name in chosen:
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    return [name if name is not None and counts[name] >= 2 else None for name in chosen]


@dataclass
class ScopedRound:
    """What the edit runs for a round's requests once their scope is resolved."""

    requests: list[ForgetRequest]
    """The round's requests, then the neutral questions the entity groups add (their entity as
    ``subject``, so each is keyed at the entity's last token)."""
    groups: list[int]
    """Per request in ``requests``: the index of the one target (δ) it shares."""
    scopes: list[str]
    """Per request given by the user: 'fact' or 'entity'."""
    entities: list[dict] = field(default_factory=list)
    """Per entity group: its entity, how it was found, its member requests, the added questions."""
    num_given: int = 0
    members: list[int | None] = field(default_factory=list)
    """Per request in ``requests``: the index (into ``entities``) of its entity group, ``None`` for a fact."""

    def entity_kind(self, index: int) -> str | None:
        """``None`` for a fact-scope request, else 'person' or 'entity' (its group's entity)."""
        group = self.members[index] if index < len(self.members) else None
        return None if group is None else ("person" if self.entities[group]["person"] else "entity")

    @property
    def added(self) -> list[ForgetRequest]:
        return self.requests[self.num_given:]

    def is_entity(self, index: int) -> bool:
        """Whether request ``index`` (of ``requests``) belongs to an entity group."""
        return self.entity_kind(index) is not None


_NOT_PEOPLE = {"City", "River", "Lake", "Mountain", "Mountains", "Island", "Islands", "Street", "Park", "University",
               "College", "Kingdom", "Republic", "States", "Empire", "Museum", "Library", "Award", "Prize", "Company",
               "Times", "Festival", "Ocean", "Sea", "Bay", "Valley", "Desert", "Tower", "Bridge"}
"""Words that make a capitalised name a place, an institution or a thing rather than a person."""


def looks_like_person(name: str) -> bool:
    """Whether ``name`` reads as a person's name: one of the corpus's people, or, when it is none of
    its places, things, works or elements and holds none of their several-word names, two or more
    capitalised words without a connector ("Basil Mahfouz Al-Kuwaiti", "Elena Marsh"; not "Japan",
    "South Korea", "Romeo and Juliet", "New York City")."""
    from .corpus import KNOWN_KINDS

    lower = name.lower()
    for kind, names in KNOWN_KINDS.items():
        if lower in {n.lower() for n in names}:
            return kind == "person"
        if kind != "person" and any(_names(n, name) for n in names if " " in n):
            return False  # "New York City" holds a place
    words = name.split()
    return len(words) >= 2 and all(w[:1].isupper() for w in words) and not _NOT_PEOPLE & set(words)


def resolve_scope(requests: list[ForgetRequest], default: str = "auto", neutral_questions: int = 4) -> ScopedRound:
    """Resolve each request's scope (its own ``scope`` field, else ``default``) and group the
    entity-scope requests by entity; ``neutral_questions`` relation-neutral questions
    (``prompts.NEUTRAL_TEMPLATES``) per entity join its group."""
    if default not in SCOPES:
        from ..storage import UniEraseError

        raise UniEraseError(f"unknown scope {default!r} (choose from {', '.join(SCOPES)})")
    found = shared_entities(requests)
    full = {e: full_name(e, [r.question for r, f in zip(requests, found) if f == e]) for e in set(found) if e}
    resolved, scopes, groups, members = [], [], [], []
    by_entity: dict[str, int] = {}
    entities: list[dict] = []
    for i, (r, entity) in enumerate(zip(requests, found)):
        scope = r.scope or default
        if scope == "auto":
            scope = "entity" if entity and looks_like_person(full[entity]) else "fact"
        if scope == "entity" and entity is None:  # asked for, but no other request names it: its own entity
            entity = r.subject or _own_entity(r.question)
        scopes.append(scope)
        if scope == "fact":
            resolved.append(r)
            groups.append(-1)
            members.append(None)
            continue
        resolved.append(replace(r, subject=entity))
        if entity not in by_entity:
            by_entity[entity] = len(entities)
            name = full.get(entity, entity)
            entities.append({"entity": name, "from": "subject" if r.subject else "shared name",
                             "person": looks_like_person(name), "requests": []})
        groups.append(by_entity[entity])
        members.append(by_entity[entity])
        entities[by_entity[entity]]["requests"].append(i)
    # one target per entity group; each fact-scope request its own target
    offset = len(entities)
    groups = [g if g >= 0 else offset + k for k, g in enumerate(groups)]
    for g, info in enumerate(entities):
        info["added"] = [t.format(info["entity"]) for t in NEUTRAL_TEMPLATES[:neutral_questions]]
        for question in info["added"]:
            resolved.append(ForgetRequest(question=question, subject=info["entity"]))
            groups.append(g)
            members.append(g)
    return ScopedRound(resolved, compact_groups(groups), scopes, entities, num_given=len(requests), members=members)


def full_name(entity: str, questions: list[str]) -> str:
    """The name ``entity`` stands for in ``questions``: the most frequent name span that ends with it
    as whole words ("Jaime Vasquez" for "Vasquez", chosen because a misspelt "Jamie Vasquez" names
    it too; a question's first word never counts); ``entity`` itself when none is longer."""
    counts: dict[str, int] = {}
    for question in questions:  # a question's capitalised first word ("Has Chukwu …") is not part of a name
        for name in set(name_spans(question[:1].lower() + question[1:])):
            words, tail = name.split(), entity.split()
            if len(words) > len(tail) and words[-len(tail):] == tail:
                counts[name] = counts.get(name, 0) + 1
    if not counts:
        return entity
    best = max(counts.values())
    return max((n for n, c in counts.items() if c == best), key=lambda n: (len(n), n))


def compact_groups(groups: list[int]) -> list[int]:
    """Group ids renumbered 0..G-1 in order of first use."""
    order: dict[int, int] = {}
    return [order.setdefault(g, len(order)) for g in groups]


def _own_entity(question: str) -> str:
    from .prompts import entity_span

    start, end = entity_span(question)
    return _POSSESSIVE.sub("", question[start:end]) or question[start:end]
