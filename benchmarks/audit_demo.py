"""Recovery audit of the demo's erasure: every attack of ``unierase audit`` on the 24 demo facts.

Erases the demo's forget facts from SmolLM2-135M-Instruct as ``unierase demo`` does (questions
only, library defaults; the erased model is cached, keyed on what the erasure runs with, and reused) and audits it with each fact's
answer keyword and its reworded question, writing ``benchmarks/results/audit/demo.json`` and
``demo.md``.

    python benchmarks/audit_demo.py [--work DIR] [--samples 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_tofu import unierase_defaults_key  # the sibling scripts
from rows import repo_commit

RESULTS = Path(__file__).parent / "results" / "audit"


def main() -> None:
    import unierase
    from unierase.audit import AuditConfig, audit
    from unierase.edit_checks import load_demo_facts
    from unierase.models.loading import default_model_dir
    from unierase.storage import default_cache_dir, write_json_atomic, write_text_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=None, help="where the erased model is kept (default: <cache>/audit_demo)")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()

    work = Path(args.work) if args.work else default_cache_dir() / "audit_demo"
    # keyed on the defaults the erasure runs with (recipe, code, version): a model erased otherwise is not reused
    erased = work / f"erased-{unierase_defaults_key(str(default_model_dir()))}"
    facts = [f for f in load_demo_facts() if f["role"] == "forget"]
    if not (erased / "unierase_manifest.json").is_file():
        unierase.forget([{"question": f["question"]} for f in facts], erased, overwrite=True)
    requests = [{"question": f["question"], "answer": f["answer"], "paraphrases": [f["paraphrase"]]} for f in facts]
    report = audit(str(erased), requests, config=AuditConfig(samples=args.samples))
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    data = report.to_dict()
    data["model"] = "SmolLM2-135M-Instruct after the demo's erasure (library defaults)"
    data["recipe"] = json.loads((erased / "unierase_manifest.json").read_text())["rounds"][-1].get("recipe")
    data["commit"] = repo_commit()
    write_json_atomic(results / "demo.json", data)
    write_text_atomic(results / "demo.md", report.markdown().replace(str(erased), "demo erasure"))
    print(json.dumps(data["aggregate"], indent=1))


if __name__ == "__main__":
    main()
