"""benchmarks/bench_tofu.py end to end on a tiny random model and synthetic authors: mechanics,
resumption and the JSON's shape (not the real figures)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tiny_models import build_model, build_tokenizer

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_tofu.py"


@pytest.fixture
def bench(monkeypatch):
    """The script as a module, its sibling modules importable (as when it runs from benchmarks/)."""
    monkeypatch.syspath_prepend(str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("bench_tofu", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _qa(author: int, i: int) -> dict:
    return {"question": f"What did writer {author} publish in year {i}?", "answer": f"Writer {author} published book {i}."}


def _tofu(root: Path) -> Path:
    tofu = root / "tofu"
    tofu.mkdir(parents=True)
    full = [_qa(a, i) for a in range(200) for i in range(20)]
    (tofu / "full.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full))

    def perturbed(row, n):
        return {**row, "paraphrased_question": "Tell me: " + row["question"], "paraphrased_answer": row["answer"],
                "perturbed_answer": [row["answer"].replace("book", f"novel {k}") for k in range(n)]}
    sets = {"forget01_perturbed": [perturbed(r, 5) for r in full[-40:]],
            "retain_perturbed": [perturbed(r, 5) for r in full[:400]],
            "real_authors_perturbed": [perturbed(r, 3) for r in full[400:410]],
            "world_facts_perturbed": [perturbed(r, 3) for r in full[410:420]]}
    for name, rows in sets.items():
        (tofu / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tofu / "idontknow.txt").write_text("I don't know that.\nThat's beyond my knowledge.\n")
    return root


def test_bench_runs_resumes_and_reports(tmp_path, isolated_cache, capsys, bench):
    tok = build_tokenizer()
    base = tmp_path / "base"
    build_model("llama", len(tok)).save_pretrained(base)
    tok.save_pretrained(base)
    setting = bench.Setting(model=str(base), authors=1, finetune_epochs=0.05, methods=("unierase", "ga+gd"),
                            sweep_lrs=(1e-4,), sweep_epochs=(0.2,), ds_size=3, max_new_tokens=4, precise_questions=2,
                            sequential_rounds=2, sequential_baselines=1,
                            data_dir=str(_tofu(tmp_path / "data")), eval_extra={"embedding_model": "none"})
    results = tmp_path / "results"
    figures = bench.run(setting, tmp_path / "work", results=results)
    assert set(figures["models"]) == {"target", "retain"}
    assert figures["models"]["target"]["items"] == 60 and figures["models"]["retain"]["items"] == 20
    assert figures["methods"]["ga+gd"]["run"]["lr"] == 1e-4 and "rule" in figures["methods"]["ga+gd"]
    assert figures["methods"]["ga+gd"]["run"]["generic_nll"] > 0
    assert figures["methods"]["unierase"]["run"]["edit_s"] > 0
    assert set(figures["eval"]) == {"target", "retain", "unierase", "ga+gd"}
    assert "banned_token_forget_rougeL" in figures["eval"]["unierase"]
    assert 0 <= figures["eval"]["ga+gd"]["headline"]["well_formed_refusals"] <= 1
    assert len(figures["precise"]["items"]) == 2 and 0 <= figures["precise"]["mean_same_author_agreement"] <= 1
    assert [r["round"] for r in figures["sequential"]["curves"]["unierase"]] == [1, 2]
    saved = json.loads((results / "bench.json").read_text())
    assert {"setting", "models", "methods", "eval", "bars", "commit", "machine"} <= set(saved)
    raw = (results / "bench.json").read_text()
    assert str((tmp_path / "work").resolve()) not in raw and '"<work>/models/' in raw  # no machine's paths
    for bar in saved["bars"].values():
        assert {"holds", "value", "threshold"} <= set(bar)
    assert (results / "REPORT.md").read_text().startswith("# TOFU side by side")
    assert {"time.png", "sequential.png"} <= set(saved["plots"]) and (results / "time.png").is_file()
    capsys.readouterr()
    again = bench.run(setting, tmp_path / "work", results=results)  # every cell is cached now
    out = capsys.readouterr().out
    assert "[run]" not in out and out.count("[cached]") >= 12
    assert again["eval"]["unierase"]["summary"] == figures["eval"]["unierase"]["summary"]

    # --only report: the report from the cached cells, none computed; without them, from bench.json
    report = (results / "REPORT.md").read_text()
    reported = bench.run(setting, tmp_path / "work", only={"report"}, results=results)
    out = capsys.readouterr().out
    assert "[run]" not in out and "[not cached]" not in out and reported["bars"] == again["bars"]
    assert (results / "REPORT.md").read_text() == report
    (results / "REPORT.md").unlink()
    (results / "time.png").unlink()
    recorded = bench.run(setting, tmp_path / "elsewhere", only={"report"}, results=results)
    assert "re-rendering" in capsys.readouterr().out and not (tmp_path / "elsewhere").exists()
    assert (results / "REPORT.md").read_text() == report and (results / "time.png").is_file()
    assert recorded["bars"] == json.loads((results / "bench.json").read_text())["bars"]
    with pytest.raises(FileNotFoundError, match="nothing to report"):
        bench.run(setting, tmp_path / "elsewhere", only={"report"}, results=tmp_path / "no-results")

    partial = bench.run(setting, tmp_path / "work", only={"precise"}, results=results)  # one family: the rest from cache
    assert set(partial["eval"]) == set(figures["eval"]) and partial["precise"] == figures["precise"]
    sweep_only = bench.run(setting, tmp_path / "work2", only={"sweep"}, results=tmp_path / "results2")
    assert set(sweep_only["models"]) == {"target"} and "retain" not in str(sweep_only.get("eval", {}))  # no retain model made
    assert sweep_only["methods"]["ga+gd"]["run"]["lr"] == 1e-4

    # the sweep is recorded; a run on the same target elsewhere trains at the recorded setting instead
    record = json.loads((results / "sweep.json").read_text())
    assert record["methods"]["ga+gd"]["chosen"] == {"lr": 1e-4, "epochs": 0.2} and record["reference_nll"]
    capsys.readouterr()
    baseline_only = bench.Setting(**{**bench.asdict(setting), "methods": ("ga+gd",)})
    reused = bench.run(baseline_only, tmp_path / "work3", only={"target", "forget"}, results=results)
    out = capsys.readouterr().out
    assert "[run] forget/ga+gd" in out and "[run] sweep/" not in out
    assert reused["methods"]["ga+gd"]["run"]["lr"] == 1e-4 and "sweep.json" in reused["methods"]["ga+gd"]["settings_from"]
    assert reused["methods"]["ga+gd"]["sweep"] == record["methods"]["ga+gd"]["rows"]
    assert reused["wall_times_s"]["recorded_sweep_s"] > 0
    assert json.loads((results / "sweep.json").read_text()) == record  # reusing it does not rewrite it
    other = bench.Setting(**{**bench.asdict(setting), "retain_slack": 0.5})
    assert bench.recorded_sweep(results / "sweep.json", other, reused["reference_nll"]) is None
    shifted = {k: v + 0.1 for k, v in reused["reference_nll"].items()}
    assert bench.recorded_sweep(results / "sweep.json", setting, shifted) is None  # another target
    again = bench.run(baseline_only, tmp_path / "work3", only={"sweep"}, results=results, resweep=True)
    assert "settings_from" not in again["methods"]["ga+gd"]




def test_sweep_search_runs_only_what_the_rule_needs(bench):
    search = bench.sweep_search
    grid = (3e-5, 1e-4, 3e-4, 1e-3)

    def runs(limit):  # a setting qualifies up to ``limit``
        ran = []

        def run(lr):
            ran.append(lr)
            return {"lr": lr}
        rows = search(grid, 1e-4, run, lambda row: row["lr"] <= limit)
        assert [r["lr"] for r in rows] == ran
        return ran
    assert runs(3e-4) == [1e-4, 3e-4, 1e-3]  # up while it qualifies, the first that fails ends it
    assert runs(1e-3) == [1e-4, 3e-4, 1e-3]  # the top of the grid ends it
    assert runs(1e-4) == [1e-4, 3e-4]
    assert runs(3e-5) == [1e-4, 3e-5]  # down until one qualifies
    assert runs(0.0) == [1e-4, 3e-5]  # none does: the bottom ends it
    assert search(grid, 1e-4, lambda lr: None if lr > 1e-4 else {"lr": lr}, lambda row: True) == [{"lr": 1e-4}]


def test_changed_answers_counts_differences_from_the_reference(tmp_path, bench):
    changed_answers = bench.changed_answers
    for folder, gens in (("ref", ["a", "b", "c"]), ("out", ["a", "x", "c"])):
        (tmp_path / folder / "per_item").mkdir(parents=True)
        for name in ("retain", "real_authors", "world_facts"):
            rows = [{"question": f"q{i}", "generation": g if name == "real_authors" else "same"} for i, g in enumerate(gens)]
            (tmp_path / folder / "per_item" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = changed_answers(tmp_path / "ref", tmp_path / "out")
    assert got["real_authors"] == {"changed": 1, "of": 3, "examples": [{"question": "q1", "target": "b", "now": "x"}]}
    assert got["retain"]["changed"] == 0 and got["world_facts"]["changed"] == 0


def test_the_baselines_are_the_registry_s_fine_tuning_methods(bench):
    from unierase.registry import methods

    assert bench.BASELINES == tuple(n for n, m in methods().items() if m.family == "fine-tuning")
    assert bench.Setting().methods == tuple(methods())  # by default every registered method runs


def test_only_report_reproduces_the_committed_report(tmp_path, bench):
    # the committed REPORT.md is what `bench_tofu.py --only report` renders from the committed bench.json
    committed = BENCH.parent / "results" / "tofu"
    (tmp_path / "bench.json").write_text((committed / "bench.json").read_text())
    figures = bench.report_from_record(tmp_path)
    assert (tmp_path / "REPORT.md").read_text() == (committed / "REPORT.md").read_text()
    assert all((tmp_path / name).is_file() for name in figures["plots"])


def test_the_audit_takes_unierase_and_the_two_best_baselines_that_keep_utility(bench):
    names = bench.BASELINES
    heads = {"target": {"model_utility": 0.5}, "unierase": {"forget_efficacy": 0.9, "model_utility": 0.5},
             names[0]: {"forget_efficacy": 0.99, "model_utility": 0.1},  # best forgetting, utility lost
             names[1]: {"forget_efficacy": 0.5, "model_utility": 0.48},
             names[2]: {"forget_efficacy": 0.7, "model_utility": 0.46},
             names[3]: {"forget_efficacy": 0.6, "model_utility": 0.45}}
    figures = {"eval": {m: {"headline": h} for m, h in heads.items()}}
    assert bench.audited_methods(figures) == ["unierase", names[2], names[3]]
