"""Oracle: the TOFU authors' own per-item logs, aggregated by this project's code, reproduce
``reference_aggregates.json`` to 1e-6, and ROUGE-L recall recomputed from their generations
reproduces the logged values."""

import json

import numpy as np
import pytest

from unierase.evaluation import metrics as M
from unierase.evaluation.tofu_logs import LOG_FILES, aggregate_log_folder, forget_quality_of_folders, read_log


@pytest.fixture(scope="module")
def logs(shared_data):
    folder = shared_data / "tofu" / "eval_logs"
    if not (folder / "reference_aggregates.json").is_file():
        pytest.skip(f"{folder} with reference_aggregates.json not present")
    return folder


@pytest.mark.parametrize("family", ["llama2-7b", "phi"])
def test_aggregates_reproduce_reference(logs, family):
    ref = json.loads((logs / "reference_aggregates.json").read_text())[family]
    for variant, folder in (("finetuned", f"{family}_full"), ("retain90", f"{family}_retain90")):
        got = aggregate_log_folder(logs / folder)
        for set_name in LOG_FILES:
            for key in ("probability", "rougeL_recall", "truth_ratio"):
                assert got[set_name][key] == pytest.approx(ref[variant][set_name][key], abs=1e-6), (variant, set_name, key)
            assert got[set_name]["n"] == ref[variant][set_name]["n"]
        assert got["model_utility"] == pytest.approx(ref[variant]["model_utility"], abs=1e-6)
    fq = forget_quality_of_folders(logs / f"{family}_full", logs / f"{family}_retain90")
    expected = ref["forget_quality_finetuned_vs_retain90"]
    assert fq == pytest.approx(expected, rel=1e-6, abs=1e-30)
    # the retain model against itself is indistinguishable
    assert forget_quality_of_folders(logs / f"{family}_retain90", logs / f"{family}_retain90") == pytest.approx(1.0)


@pytest.mark.parametrize("folder", ["llama2-7b_full", "phi_retain90"])
def test_rouge_recomputed_from_generated_text(logs, folder):
    for filename in LOG_FILES.values():
        log = read_log(logs / folder / filename)
        gens = [g[1] for g in log["generated_text"]]
        refs = [g[2] for g in log["generated_text"]]
        recomputed = M.rouge_recall(gens, refs).values
        assert np.allclose(recomputed, log["rougeL_recall"], atol=1e-9), filename
    # and the aggregates built on recomputed ROUGE equal those on the logged values
    a = aggregate_log_folder(logs / folder, recompute_rouge=True)
    b = aggregate_log_folder(logs / folder)
    assert a["model_utility"] == pytest.approx(b["model_utility"], abs=1e-12)
