"""Golden tests: every metric against values computed by hand."""

import math

import numpy as np
import pytest

from unierase.evaluation import metrics as M
from unierase.evaluation import suites

LN2, LN4, LN8 = math.log(2), math.log(4), math.log(8)


def test_probability_is_exp_of_minus_mean_nll():
    m = M.probability([0.0, LN2])
    assert np.allclose(m.values, [1.0, 0.5])
    assert m.value == pytest.approx(0.75)


def test_normalised_probability_over_options():
    # P(a) = 1/2, perturbed 1/4, 1/4, 1/2 -> 0.5 / (0.5 + 1.0) = 1/3
    m = M.normalised_probability([LN2], [[LN4, LN4, LN2]])
    assert m.value == pytest.approx(1 / 3)


def test_truth_ratio_uses_geometric_mean_of_perturbed():
    # perturbed NLLs ln2, ln8 -> mean ln4 -> P_pert = 1/4 (not the arithmetic mean 0.3125); P_correct = 1/2
    assert M.truth_ratio([LN2], [[LN2, LN8]]) == pytest.approx([0.5])


def test_correct_answer_key_per_split():
    assert M.correct_answer_key("forget") == "paraphrased_answer"
    assert M.correct_answer_key("retain") == "paraphrased_answer"
    assert M.correct_answer_key("real_authors") == "answer"
    assert M.correct_answer_key("world_facts") == "answer"


def test_truth_ratio_aggregates_forget_and_other():
    r = [0.5, 2.0, 1.0]
    assert M.truth_ratio_forget(r).value == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert M.truth_ratio_other(r).value == pytest.approx((0.5 + 0.0 + 0.0) / 3)
    assert suites.tofu_set("forget", nll_answer=[0.0], nll_correct=[LN2], nll_perturbed=[[LN4]])["truth_ratio"].value == pytest.approx(0.5)
    # retain: R = 0.5 -> max(0, 1 - 0.5) = 0.5 ; R = 2 -> 0
    assert M.truth_ratio_metric("retain", [2.0]).value == 0.0
    assert M.truth_ratio_metric("world_facts", [0.25]).value == pytest.approx(0.75)


def test_closer_look_truth_ratio():
    assert M.closer_look_truth_ratio("forget", [0.5]).value == pytest.approx(0.5)
    assert M.closer_look_truth_ratio("forget", [1.0]).value == pytest.approx(0.0)
    assert M.closer_look_truth_ratio("retain", [0.25]).value == pytest.approx(0.75)
    assert M.closer_look_truth_ratio("retain", [4.0]).value == 0.0


def test_ks_forget_quality_identical_and_shifted():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    assert M.forget_quality(a, a.copy()) == pytest.approx(1.0)
    assert M.forget_quality(a, a + 5.0) < 1e-20


def test_harmonic_mean_and_model_utility():
    assert M.harmonic_mean([1.0, 0.5]) == pytest.approx(2 / 3)
    assert M.harmonic_mean([1.0, 0.0]) == 0.0
    per_set = {s: {m: 0.5 for m in suites.TOFU_UTILITY_METRICS} for s in suites.UTILITY_SETS}
    assert suites.tofu_model_utility(per_set) == pytest.approx(0.5)
    per_set["retain"]["probability"] = 0.25
    assert suites.tofu_model_utility(per_set) == pytest.approx(9 / (8 * 2 + 4))
    per_set["retain"]["probability"] = None
    assert suites.tofu_model_utility(per_set) is None


def test_rouge_l_recall_with_stemmer():
    assert M.rouge_recall(["the cat sat"], ["the cat sat on the mat"]).value == pytest.approx(0.5)
    assert M.rouge_recall(["cats running"], ["cat run"]).value == pytest.approx(1.0)
    assert M.rouge_recall(["mat the on"], ["the cat sat on the mat"]).value == pytest.approx(2 / 6)  # LCS "the on"


def test_token_entropy():
    m = M.token_entropy([[1, 2, 3, 4], [1, 1, 1, 1], [5], [], [1, 1, 2, 2]])
    assert np.allclose(m.values, [1.0, 0.0, 0.0, 0.0, 0.5])


def test_exact_memorisation_and_extraction_strength():
    assert M.exact_memorisation([[1, 0, 3]], [[1, 2, 3]]).value == pytest.approx(2 / 3)
    es = M.extraction_strength([[9, 2, 3], [1, 2, 3], [1, 2, 9], [9, 9, 9, 9]], [[1, 2, 3]] * 3 + [[1, 2, 3, 4]])
    assert np.allclose(es.values, [2 / 3, 1.0, 1 / 3, 1 / 4])


def test_cosine_clipped_and_entailment_share():
    m = M.cosine_similarity(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[-1.0, 0.0], [1.0, 1.0]]))
    assert np.allclose(m.values, [0.0, math.sqrt(0.5)])
    e = M.entailment_share(["entailment", "neutral", "entailment"], [0.5, 0.5, 0.05])
    assert e.value == pytest.approx(1 / 3)


def test_closer_look_headline():
    def metric(v):
        return M.Metric(np.array([v]), v)

    per_set = {s: {m: metric(0.5) for m in suites.CLOSER_LOOK_METRICS} for s in ("forget",) + suites.UTILITY_SETS}
    per_set["forget"]["rougeL_recall"] = metric(0.1)
    out = suites.closer_look_headline(per_set)
    assert out["forget_efficacy"] == pytest.approx(1 - (0.1 + 0.5 * 4) / 5)
    assert out["model_utility_18"] == pytest.approx(0.5)
    per_set["forget"]["entailment"] = None
    per_set["retain"]["entailment"] = None
    out = suites.closer_look_headline(per_set)
    assert out["forget_efficacy"] is None and out["model_utility_18"] is None
    assert out["forget_efficacy_available"] == pytest.approx(1 - (0.1 + 0.5 * 3) / 4)
    assert out["model_utility_available_terms"] == 17
    assert "forget.entailment" in out["absent_terms"] and "retain.entailment" in out["absent_terms"]


def test_refusals_and_unchanged():
    refusals = ["That's beyond my knowledge."]
    assert M.is_refusal("I don't know that.")
    assert M.is_refusal("Hmm, that's beyond my knowledge!", refusals)
    assert not M.is_refusal("The capital of France is Paris.", refusals)
    assert not M.is_refusal("")
    assert M.refusal_rate(["I'm not sure about that.", "Paris."]).value == pytest.approx(0.5)
    assert M.unchanged_share(["a ", "b"], ["a", "c"]).value == pytest.approx(0.5)
