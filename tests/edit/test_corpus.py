"""The substitute pools are disjoint from every scored fact: a substitute's question is preserved
by the edit, so a scored neighbour among them would be kept by construction. The invented names
are names no list of the corpus holds."""

import json
import re
from pathlib import Path

from unierase.edit.corpus import ENTITY_GROUPS, KNOWN_KINDS, SUBSTITUTE_GROUPS, invented_names, rare_name_answers
from unierase.edit.prompts import substitute_entities
from unierase.edit_checks import load_demo_facts

HELDOUT = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "heldout_facts.jsonl"


def _scored_texts() -> list[str]:
    rows = load_demo_facts() + [json.loads(line) for line in HELDOUT.read_text(encoding="utf-8").splitlines()
                                if line.strip()]
    return [r.get(field) or "" for r in rows for field in ("question", "paraphrase", "answer", "subject")]


def test_no_substitute_is_named_by_a_scored_fact():
    texts = _scored_texts()
    for kind, names in SUBSTITUTE_GROUPS.items():
        for name in names:
            # a person also by surname ("Shakespeare" is the answer to "Who wrote Hamlet?")
            forms = {name, name.split()[-1]} if kind == "person" else {name}
            hits = [t for t in texts for f in forms if re.search(r"\b" + re.escape(f) + r"\b", t, re.IGNORECASE)]
            assert not hits, (kind, name, hits[:3])


def test_every_pool_is_large_enough_and_every_corpus_entity_has_a_kind():
    assert all(len(names) >= 20 for names in SUBSTITUTE_GROUPS.values())
    for kind, names in ENTITY_GROUPS.items():
        assert set(names) <= set(KNOWN_KINDS[kind])


def test_a_scored_entity_draws_substitutes_of_its_kind_from_the_pool_only():
    # France is a demo fact: it is still known as a country, but only pool countries stand in for it
    others = substitute_entities("France", set(), 8, "What is the capital of France?")
    assert len(others) == 8 and set(others) <= set(SUBSTITUTE_GROUPS["country"])
    assert not {"Japan", "Germany", "Italy"} & set(substitute_entities("France", set(), 50, "x"))


def test_invented_names_are_deterministic_distinct_and_unknown_to_the_corpus():
    names = invented_names(50)
    assert names == invented_names(50) and len(set(names)) == 50
    assert all(len(n.split()) == 2 for n in names)
    assert not set(names) & {x for group in ENTITY_GROUPS.values() for x in group}
    pairs = rare_name_answers(10)
    assert len(pairs) == 10 and all(name in q and name in a for (q, a), name in zip(pairs, invented_names(10)))
