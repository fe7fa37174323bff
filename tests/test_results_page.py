"""benchmarks/results_page.py: docs/results.md is what the committed results files say."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("results_page", ROOT / "benchmarks" / "results_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_results_page_matches_the_results_files():
    # a results file changed without `python benchmarks/results_page.py` fails here
    assert (ROOT / "docs" / "results.md").read_text() == _load().build()


def test_a_missing_results_file_is_listed_not_skipped(tmp_path, monkeypatch):
    page = _load()
    monkeypatch.setattr(page, "RESULTS", tmp_path)
    text = page.build()
    assert "Missing results files:" in text and "`tofu/bench.json`" in text and "`entity_scope.json`" in text
