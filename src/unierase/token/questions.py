"""A generic question pool for training and checking the unlearning token.

The token must lead into a refusal after *any* question, so it is trained on questions that are
not the ones later forgotten. The pool is built here from the project's own templates and
fillers (no benchmark data). ``heldout_questions`` uses different templates and fillers, so a
check on it measures universality rather than memorisation.
"""

from __future__ import annotations



_TRAIN_TEMPLATES = [
    "What is the population of {place}?",
    "Which river flows through {place}?",
    "What is {place} famous for?",
    "When was {place} founded?",
    "What is the climate like in {place}?",
    "Who is the mayor of {place}?",
    "What is the tallest building in {place}?",
    "Where was {person} born?",
    "When did {person} die?",
    "What was {person}'s first job?",
    "Who was {person} married to?",
    "Which school did {person} attend?",
    "What awards did {person} win?",
    "What is the main ingredient of {thing}?",
    "Who invented {thing}?",
    "How is {thing} made?",
    "What is {thing} used for?",
    "Where does {thing} come from?",
]
_TRAIN_PLACES = ["Lyon", "Osaka", "Toronto", "Kraków", "Valencia", "Porto", "Seville", "Munich", "Glasgow", "Marseille", "Bruges", "Bergen"]
_TRAIN_PEOPLE = ["Elena Marsh", "Tomas Varga", "Priya Nair", "Jonas Berg", "Amara Okafor", "Luis Ortega", "Mei Tanaka", "Oskar Lind", "Sofia Rossi", "Daniel Weber"]
_TRAIN_THINGS = ["paper", "glass", "cheese", "soap", "chocolate", "concrete", "the compass", "the bicycle", "ink", "porcelain", "the printing press", "yogurt"]

_HELDOUT_TEMPLATES = [
    "In what year did {person} publish their first book?",
    "What instrument does {person} play?",
    "Which team did {person} coach?",
    "How many languages does {person} speak?",
    "What is the area of {place} in square kilometres?",
    "Which airport serves {place}?",
    "What is the oldest church in {place}?",
    "Can you tell me the history of {thing}?",
    "What is the melting point of {thing}?",
    "Who first described {thing}?",
]
_HELDOUT_PLACES = ["Tampere", "Ghent", "Kaunas", "Bilbao", "Graz", "Aarhus"]
_HELDOUT_PEOPLE = ["Ingrid Holm", "Rafael Duarte", "Hana Kobayashi", "Pieter de Vries", "Leila Haddad", "Marek Novak"]
_HELDOUT_THINGS = ["bronze", "wax", "the telescope", "silk", "vinegar", "the abacus"]


def _fill(templates: list[str], places: list[str], people: list[str], things: list[str]) -> list[str]:
    out = []
    for template in templates:
        if "{place}" in template:
            out += [template.format(place=p) for p in places]
        elif "{person}" in template:
            out += [template.format(person=p) for p in people]
        else:
            out += [template.format(thing=t) for t in things]
    return out


def _interleave(questions: list[str], stride: int) -> list[str]:
    """A fixed shuffle (stride permutation) so that truncating the pool keeps its variety."""
    n = len(questions)
    while n % stride == 0 or stride % n == 0:
        stride += 1
    return [questions[(i * stride) % n] for i in range(n)]


def training_questions(limit: int | None = None) -> list[str]:
    pool = _interleave(_fill(_TRAIN_TEMPLATES, _TRAIN_PLACES, _TRAIN_PEOPLE, _TRAIN_THINGS), 37)
    return pool[:limit] if limit else pool


def heldout_questions(limit: int | None = None) -> list[str]:
    pool = _interleave(_fill(_HELDOUT_TEMPLATES, _HELDOUT_PLACES, _HELDOUT_PEOPLE, _HELDOUT_THINGS), 7)
    return pool[:limit] if limit else pool


__all__ = ["training_questions", "heldout_questions"]
