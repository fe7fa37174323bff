import json
from pathlib import Path

from unierase.calibrate.pool import POOL_FIELDS, load_pool, split_facts
from unierase.edit_checks import load_demo_facts

HELDOUT = Path(__file__).parents[2] / "benchmarks" / "data" / "heldout_facts.jsonl"


def test_the_pool_shares_no_question_or_subject_with_the_facts_that_are_scored():
    pool = load_pool()
    assert len(pool) >= 100 and all(set(POOL_FIELDS) <= set(r) for r in pool)
    assert all(r["subject"] in r["question"] for r in pool)
    scored = load_demo_facts() + [json.loads(line) for line in HELDOUT.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert not {r["question"] for r in pool} & {r["question"] for r in scored}
    assert not {r["paraphrase"] for r in pool} & {r.get("paraphrase") for r in scored}


def test_the_split_takes_every_relation_in_turn_and_never_a_fact_twice():
    known = [{"question": f"{rel} {i}?", "relation": rel} for rel in ("capital", "author", "language") for i in range(6)]
    erased, kept = split_facts(known, 6, 20)
    assert len(erased) == 6 and {r["relation"] for r in erased} == {"capital", "author", "language"}
    assert not {r["question"] for r in erased} & {r["question"] for r in kept}
    assert len(kept) == 12 and {r["relation"] for r in kept} == {"capital", "author", "language"}
    assert split_facts(known, 6, 20) == (erased, kept)


def test_a_model_that_knows_few_facts_keeps_two_neighbours_per_erased_fact():
    known = [{"question": f"{rel} {i}?", "relation": rel} for rel in ("capital", "author", "language") for i in range(15)]
    erased, kept = split_facts(known, 24, 48)
    assert (len(erased), len(kept)) == (15, 30)
