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


def test_every_results_file_is_linked_with_its_script_or_excluded_with_a_reason():
    # a results file the page does not link (beside the script that made it) fails here: link it from a
    # section of benchmarks/results_page.py, name it in EXCLUDED with the reason, or `git rm` it if obsolete
    assert _load().unaccounted() == {}


def test_an_unlinked_results_file_is_reported(tmp_path, monkeypatch):
    page = _load()
    (tmp_path / "tofu").mkdir()
    (tmp_path / "stray.json").write_text("{}")
    (tmp_path / "tofu" / "notes.md").write_text("")
    monkeypatch.setattr(page, "RESULTS", tmp_path)
    text = page.build() + "\n\nSee [`tofu/notes.md`](../benchmarks/results/tofu/notes.md).\n"
    problems = page.unaccounted(text)
    assert set(problems) == {"stray.json", "tofu/notes.md"}
    assert "neither linked" in problems["stray.json"] and "without the script" in problems["tofu/notes.md"]
    monkeypatch.setattr(page, "EXCLUDED", {"stray.json": "a scratch file", "gone.json": "obsolete"})
    text += "\n\n[`tofu/notes.md`](../benchmarks/results/tofu/notes.md), made by `python benchmarks/bench_tofu.py`.\n"
    assert page.unaccounted(text) == {"gone.json": "excluded but not there"}
