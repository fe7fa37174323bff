"""Assembly: the metrics of an evaluation (TOFU, the closer look, what goes beyond both) and its
per-item rows, from the per-item results of its stages. Plain functions of the stages' data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import metrics as M
from . import suites
from .data import SET_NAMES


def complete(stage_data: dict, name: str, n: int) -> dict[int, Any] | None:
    """A stage's items when every one of the ``n`` is there, else None."""
    data = stage_data.get(name)
    if data is None or any(i not in data for i in range(n)):
        return None
    return data

def assemble(sets: dict, stage_data: dict, *, tokenizer, refusals, closer_look: bool, retain_ratios=None,
             retain_source=None, reference_generations=None, reference_source=None) -> tuple[dict, dict[str, list[dict]]]:
    """The TOFU, closer-look and extra metrics and the per-item rows from the stages' results (a
    stage not complete leaves its metrics out)."""
    tofu: dict = {"sets": {}}
    closer: dict = {"sets": {}}
    extra: dict = {}
    per_item: dict[str, list[dict]] = {}
    tofu_metrics: dict[str, dict] = {}
    cl_metrics: dict[str, dict] = {}
    tok = tokenizer
    for set_name in SET_NAMES:
        ev = sets[set_name]
        n = len(ev.rows)
        rows = [{"index": i, "question": r["question"], "answer": r["answer"]} for i, r in enumerate(ev.rows)]
        if set_name in ("forget", "retain"):
            for i, r in enumerate(ev.rows):
                rows[i]["paraphrased_answer"] = r["paraphrased_answer"]
        score = complete(stage_data, f"score.{set_name}", n)
        gen = complete(stage_data, f"generate.{set_name}", n)
        entry: dict = {"n": n, "config": ev.config, "source": ev.origin, "rows_in_file": ev.total_rows}
        rouge = rouge1 = None
        if gen is not None:
            gens = [gen[i]["generation"] for i in range(n)]
            rouge = M.rouge_recall(gens, [r["answer"] for r in ev.rows])
            rouge1 = M.rouge_recall(gens, [r["answer"] for r in ev.rows], kind="rouge1")
            ent = M.token_entropy([tok(g, add_special_tokens=False)["input_ids"] for g in gens])
            refusal = M.refusal_rate(gens, refusals)
            for i in range(n):
                rows[i].update(generation=gens[i], n_new_tokens=gen[i]["n_new_tokens"],
                               rougeL_recall=float(rouge.values[i]), rouge1_recall=float(rouge1.values[i]),
                               token_entropy=float(ent.values[i]), refusal=bool(refusal.values[i]))
            entry["rougeL_recall"] = rouge.value
            entry["rouge1_recall"] = rouge1.value
            extra.setdefault("refusal_rate", {})[set_name] = refusal.value
        else:
            ent = None
        if score is not None:
            nll_a = [score[i]["nll_answer"] for i in range(n)]
            nll_c = [score[i]["nll_correct"] for i in range(n)]
            nll_p = [score[i]["nll_perturbed"] for i in range(n)]
            res = suites.tofu_set(set_name, nll_answer=nll_a, nll_correct=nll_c, nll_perturbed=nll_p,
                                  rouge_l=None if rouge is None else rouge.values)
            em = M.Metric(np.array([score[i]["exact_memorisation"] for i in range(n)]), 0.0)
            es = M.Metric(np.array([score[i]["extraction_strength"] for i in range(n)]), 0.0)
            entry["probability"] = res["probability"].value
            entry["truth_ratio"] = res["truth_ratio"].value
            entry["exact_memorisation"] = float(em.values.mean())
            entry["extraction_strength"] = float(es.values.mean())
            for i in range(n):
                rows[i].update(nll_answer=nll_a[i], nll_correct=nll_c[i], nll_perturbed=nll_p[i],
                               n_answer_tokens=score[i]["n_tokens"],
                               probability=float(res["probability"].values[i]),
                               truth_ratio=float(res["ratios"][i]),
                               truth_ratio_term=float(res["truth_ratio"].values[i]),
                               exact_memorisation=score[i]["exact_memorisation"],
                               extraction_strength=score[i]["extraction_strength"])
            tofu_metrics[set_name] = res
            if closer_look:
                cos = complete(stage_data, f"cosine.{set_name}", n)
                cos_m = None if cos is None else M.Metric(np.array([cos[i] for i in range(n)]), float(np.mean([cos[i] for i in range(n)])))
                nli = complete(stage_data, f"nli.{set_name}", n)
                nli_m = None if (nli is None or rouge is None) else M.entailment_share([nli[i] for i in range(n)], rouge.values)
                cl = suites.closer_look_set(set_name, tofu=res, token_entropy=ent, cosine=cos_m, entailment=nli_m)
                cl_metrics[set_name] = cl
                closer["sets"][set_name] = {k: (None if v is None else float(v.value)) for k, v in cl.items()}
                for i in range(n):
                    rows[i]["closer_look_truth_ratio"] = float(cl["truth_ratio"].values[i])
                    if cos_m is not None:
                        rows[i]["cosine_similarity"] = float(cos_m.values[i])
                    if nli is not None:
                        rows[i]["nli_label"] = nli[i]
        tofu["sets"][set_name] = entry
        per_item[set_name] = rows
    # headline TOFU numbers
    tofu["model_utility"] = suites.tofu_model_utility(tofu["sets"])
    tofu["forget_quality"] = None
    if "forget" in tofu_metrics and retain_ratios is not None:
        tofu["forget_quality"] = M.forget_quality(tofu_metrics["forget"]["ratios"], retain_ratios)
    tofu["forget_quality_against"] = retain_source
    if closer_look:
        closer.update(suites.closer_look_headline(cl_metrics))
    # beyond the papers
    para = complete(stage_data, "generate.forget_paraphrased", len(sets["forget"].rows))
    if para is not None:
        ev = sets["forget"]
        gens = [para[i]["generation"] for i in range(len(ev.rows))]
        leak = M.rouge_recall(gens, [r["answer"] for r in ev.rows])
        ref = M.refusal_rate(gens, refusals)
        extra["paraphrase_leakage"] = {"rougeL_recall": leak.value, "refusal_rate": ref.value,
                                       "original_question_rougeL_recall": tofu["sets"]["forget"].get("rougeL_recall")}
        for i, row in enumerate(per_item["forget"]):
            row.update(paraphrased_question=ev.rows[i]["paraphrased_question"], paraphrased_generation=gens[i],
                       paraphrased_rougeL_recall=float(leak.values[i]), paraphrased_refusal=bool(ref.values[i]))
    if reference_generations is not None and "generation" in (per_item["retain"][0] if per_item["retain"] else {}):
        gens = [r["generation"] for r in per_item["retain"]]
        unchanged = M.unchanged_share(gens, reference_generations)
        extra["retain_unchanged_share"] = unchanged.value
        extra["retain_unchanged_against"] = reference_source
        for i, row in enumerate(per_item["retain"]):
            row["reference_generation"] = reference_generations[i]
            row["unchanged"] = bool(unchanged.values[i])
    return {"tofu": tofu, "closer_look": closer if closer_look else None, "extra": extra}, per_item


def clean(obj):
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
