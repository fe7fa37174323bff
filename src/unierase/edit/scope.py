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
from collections import Counter
from dataclasses import dataclass, field, replace

from ..requests import SCOPES, ForgetRequest
from .prompts import NEUTRAL_TEMPLATES, PERSON_TEMPLATES

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
    unattributed: list[int] = field(default_factory=list)
    """Requests asked for in entity scope that name no entity and that nothing attributes to one:
    erased as facts (``resolve_scope``)."""

    def entity_kind(self, index: int) -> str | None:
        """``None`` for a fact-scope request, else 'person' or 'entity' (its group's entity)."""
        group = self.members[index] if index < len(self.members) else None
        return None if group is None else ("person" if self.entities[group]["person"] else "entity")

    @property
    def added(self) -> list[ForgetRequest]:
        return self.requests[self.num_given:]

    def described(self, index: int) -> bool:
        """``described_requests`` of request ``index``."""
        return described_requests([self.requests[index]], [self.entity_kind(index)])[0]

    def is_entity(self, index: int) -> bool:
        """Whether request ``index`` (of ``requests``) belongs to an entity group."""
        return self.entity_kind(index) is not None


_NOT_PEOPLE = {"City", "River", "Lake", "Mountain", "Mountains", "Island", "Islands", "Street", "Park", "University",
               "College", "Kingdom", "Republic", "States", "Empire", "Museum", "Library", "Award", "Prize", "Company",
               "Times", "Festival", "Ocean", "Sea", "Bay", "Valley", "Desert", "Tower", "Bridge"}
"""Words that make a capitalised name a place, an institution or a thing rather than a person."""


_CALENDAR = {"January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
             "November", "December", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"}


def is_common_entity(name: str) -> bool:
    """Whether ``name`` is a date word, a place or another common name that a question mentions in
    passing ("born in Kuwait City on the 7th of February"): a month or weekday, a country or city the
    corpus knows, or a name ending in a place word ("… City", "… River"). Entity scope erases such a
    name only when a request names it as its ``subject``."""
    from .corpus import KNOWN_KINDS

    words = name.replace(",", " ").split()
    if not words or any(w in _CALENDAR for w in words) or words[-1] in _NOT_PEOPLE:
        return True
    places = {n.lower() for kind in ("country", "city") for n in KNOWN_KINDS.get(kind, [])}
    return name.lower() in places


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


def nameable(name: str) -> bool:
    """Whether a name found in the questions (not given as ``subject``) may key an entity group: it
    reads as the name of a person or an organisation and is no date word or place."""
    return looks_like_person(name) and not is_common_entity(name)


def resolve_scope(requests: list[ForgetRequest], default: str = "auto", neutral_questions: int = 4,
                  evidence: dict[int, str] | None = None, person_questions: int = 0) -> ScopedRound:
    """Resolve each request's scope (its own ``scope`` field, else ``default``) and group the
    entity-scope requests by entity; ``neutral_questions`` relation-neutral questions
    (``prompts.NEUTRAL_TEMPLATES``) per entity, and ``person_questions`` of ``prompts.PERSON_TEMPLATES``
    per person, join its group.

    An entity-scope request that names no entity of the round (and has no ``subject``) is
    attributed by evidence: its ``answer``, else ``evidence[i]`` (the model's own answer), naming
    one of the round's entities makes it a member of that group (keyed at the question's end, as it
    names the entity only by description, with a target of its own). One that nothing attributes stays fact scope and is
    listed in ``ScopedRound.unattributed``: a date, a month or a place named in passing is never
    erased as an entity unless a request gives it as its subject.
    """
    if default not in SCOPES:
        from ..storage import UniEraseError

        raise UniEraseError(f"unknown scope {default!r} (choose from {', '.join(SCOPES)})")
    found = shared_entities(requests)
    full = {e: full_name(e, [r.question for r, f in zip(requests, found) if f == e]) for e in set(found) if e}
    found = [e if e is None or r.subject or nameable(full[e]) else None for r, e in zip(requests, found)]
    scopes = [_scope_of(r, e, full, default) for r, e in zip(requests, found)]
    keys = [(e or r.subject or _nameable_own_entity(r.question)) if scope == "entity" else None
            for r, e, scope in zip(requests, found, scopes)]
    entities, members = _entity_groups(requests, keys, full)
    unattributed = _attribute(requests, scopes, keys, members, entities, evidence or {})
    resolved = [replace(r, subject=key) if key else r for r, key in zip(requests, keys)]
    # one target per entity group; each fact-scope request, and each request attributed to a group
    # (keyed at its own question's end, where the group's shared target is not reached), its own target
    offset = len(entities)
    attributed = {i for info in entities for i in info["attributed"]}
    groups = [g if g is not None and k not in attributed else offset + k for k, g in enumerate(members)]
    for g, info in enumerate(entities):
        templates = NEUTRAL_TEMPLATES[:neutral_questions] + (PERSON_TEMPLATES[:person_questions] if info["person"] else [])
        info["added"] = [t.format(info["entity"]) for t in templates]
        for question in info["added"]:
            resolved.append(ForgetRequest(question=question, subject=info["entity"]))
            groups.append(g)
            members.append(g)
    return ScopedRound(resolved, compact_groups(groups), scopes, entities, num_given=len(requests), members=members,
                       unattributed=unattributed)


def resolve_with_evidence(requests: list[ForgetRequest], default: str, neutral_questions: int, answer,
                          person_questions: int = 0) -> ScopedRound:
    """``resolve_scope``, asking ``answer(questions) → texts`` (the model) about the entity-scope
    requests that name no entity and carry no ``answer`` of their own."""
    scoped = resolve_scope(requests, default, neutral_questions, person_questions=person_questions)
    asked = [i for i in scoped.unattributed if not requests[i].answer]
    if not asked:
        return scoped
    texts = answer([requests[i].question for i in asked])
    return resolve_scope(requests, default, neutral_questions, evidence=dict(zip(asked, texts)),
                         person_questions=person_questions)


def _scope_of(request: ForgetRequest, entity: str | None, full: dict[str, str], default: str) -> str:
    scope = request.scope or default
    if scope == "auto":
        return "entity" if entity and looks_like_person(full[entity]) else "fact"
    return scope


def _nameable_own_entity(question: str) -> str | None:
    """A lone request's own entity (its last capitalised name) when it may key a group."""
    own = _own_entity(question)
    return own if nameable(own) else None


def _entity_groups(requests: list[ForgetRequest], keys: list[str | None], full: dict[str, str]):
    """(entity groups, per request its group or ``None``) for the requests with an entity key."""
    entities: list[dict] = []
    by_entity: dict[str, int] = {}
    members: list[int | None] = []
    for i, (r, key) in enumerate(zip(requests, keys)):
        if key is None:
            members.append(None)
            continue
        if key not in by_entity:
            by_entity[key] = len(entities)
            name = full.get(key, key)
            entities.append({"entity": name, "from": "subject" if r.subject else "shared name",
                             "person": looks_like_person(name), "requests": [], "attributed": []})
        members.append(by_entity[key])
        entities[by_entity[key]]["requests"].append(i)
    return entities, members


def _attribute(requests, scopes, keys, members, entities, evidence: dict[int, str]) -> list[int]:
    """Entity-scope requests without an entity: join the group their answer (or the model's own)
    names, else fall back to fact scope; returns the ones nothing attributed."""
    unattributed = []
    for i, r in enumerate(requests):
        if scopes[i] != "entity" or keys[i] is not None:
            continue
        text = r.answer or evidence.get(i) or ""
        named = [g for g, info in enumerate(entities) if _names_entity(text, info["entity"])]
        if named:
            members[i] = named[0]
            entities[named[0]]["requests"].append(i)
            entities[named[0]]["attributed"].append(i)
        else:
            scopes[i] = "fact"
            unattributed.append(i)
    return unattributed


def _names_entity(text: str, entity: str) -> bool:
    """Whether ``text`` names ``entity``: the whole name, or its last word when that is a name of
    four letters or more ("Al-Kuwaiti" for "Basil Mahfouz Al-Kuwaiti")."""
    if not text:
        return False
    last = entity.split()[-1]
    return _names(entity, text) or (" " in entity and len(last) >= 4 and last[:1].isupper() and _names(last, text))


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


def described_requests(requests: list[ForgetRequest], entity_scope: list[str | None] | None) -> list[bool]:
    """Per request: whether it belongs to an entity group it does not name (``entity_scope[i]``, its
    ``ScopedRound.entity_kind``, set and no ``subject``: attributed by evidence). Such a request is
    keyed at its question's end, with a target of its own."""
    return [kind is not None and not r.subject for kind, r in zip(entity_scope or [None] * len(requests), requests)]


def shared_rows(groups: list[int] | None, num_requests: int) -> list[bool]:
    """Per request: whether its target is shared with another request (an entity group)."""
    if not groups:
        return [False] * num_requests
    sizes = Counter(groups)
    return [sizes[g] > 1 for g in groups]


def compact_groups(groups: list[int]) -> list[int]:
    """Group ids renumbered 0..G-1 in order of first use."""
    order: dict[int, int] = {}
    return [order.setdefault(g, len(order)) for g in groups]


def _own_entity(question: str) -> str:
    from .prompts import entity_span

    start, end = entity_span(question)
    return _POSSESSIVE.sub("", question[start:end]) or question[start:end]
