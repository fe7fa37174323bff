"""The held-out fact set of benchmarks/erasure_holds.py: never tuned on, and disjoint from what the
edit preserves by name (its substitute pools) and from the demo's facts."""

import json
import re
from pathlib import Path

from unierase.edit.corpus import SUBSTITUTE_GROUPS
from unierase.edit_checks import load_demo_facts

HELDOUT = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "heldout_facts.jsonl"


def test_heldout_facts_name_no_substitute_entity_and_no_demo_fact():
    rows = [json.loads(line) for line in HELDOUT.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert sum(r["role"] == "forget" for r in rows) >= 15 and sum(r["role"] == "retain" for r in rows) >= 20
    pool = {name for names in SUBSTITUTE_GROUPS.values() for name in names}
    demo = {f["question"].lower() for f in load_demo_facts()} | {f["paraphrase"].lower() for f in load_demo_facts() if f.get("paraphrase")}
    for r in rows:
        assert set(r) >= {"question", "answer", "relation", "role", "paraphrase"}, r
        for text in (r["question"], r["paraphrase"]):
            assert text.lower() not in demo, text
            named = [n for n in pool if re.search(r"\b" + re.escape(n) + r"\b", text, re.IGNORECASE)]
            assert not named, (text, named)
