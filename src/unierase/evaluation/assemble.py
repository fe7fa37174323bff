"""Assembly: the metrics of an evaluation (TOFU, the closer look, what goes beyond both) and its
per-item rows, from the per-item results of its stages. Plain functions of the stages' data."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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
             retain_source=None, reference_generations=None, reference_source=None, token_id: int | None = None,
             refusal: str | None = None, membership: dict | None = None) -> tuple[dict, dict[str, list[dict]]]:
    """The TOFU, closer-look and extra metrics and the per-item rows from the stages' results (a
    stage not complete leaves its metrics out). ``token_id``/``refusal``: the unlearning token and
    chosen refusal of the evaluated model, for the shared answer checks (``refusals.answer_checks``);
    ``membership``: the membership-inference figures (``mia.membership``), passed through."""
    acc = _Assembly(stage_data, tokenizer, refusals, closer_look)
    for set_name in SET_NAMES:
        _assemble_set(acc, set_name, sets[set_name])
    _headlines(acc, retain_ratios, retain_source)
    # beyond the papers
    _paraphrase_leakage(acc, sets["forget"])
    _retain_unchanged(acc, reference_generations, reference_source)
    _answer_checks(acc, sets, token_id, refusal)
    if membership is not None:
        acc.extra["membership"] = membership
    return {"tofu": acc.tofu, "closer_look": acc.closer if closer_look else None, "extra": acc.extra}, acc.per_item


@dataclass
class _Assembly:
    """What ``assemble`` builds up set by set (the key order of these dicts is the order written)."""

    stage_data: dict
    tokenizer: Any
    refusals: Any
    closer_look: bool
    tofu: dict = field(default_factory=lambda: {"sets": {}})
    closer: dict = field(default_factory=lambda: {"sets": {}})
    extra: dict = field(default_factory=dict)
    per_item: dict[str, list[dict]] = field(default_factory=dict)
    tofu_metrics: dict[str, dict] = field(default_factory=dict)
    cl_metrics: dict[str, dict] = field(default_factory=dict)


def _assemble_set(acc: _Assembly, set_name: str, ev) -> None:
    """One set's entry and rows: generation metrics, then the scores (which use ROUGE), then the closer look."""
    n = len(ev.rows)
    rows = [{"index": i, "question": r["question"], "answer": r["answer"]} for i, r in enumerate(ev.rows)]
    if set_name in ("forget", "retain"):
        for i, r in enumerate(ev.rows):
            rows[i]["paraphrased_answer"] = r["paraphrased_answer"]
    score = complete(acc.stage_data, f"score.{set_name}", n)
    gen = complete(acc.stage_data, f"generate.{set_name}", n)
    entry: dict = {"n": n, "config": ev.config, "source": ev.origin, "rows_in_file": ev.total_rows}
    rouge = ent = None
    if gen is not None:
        rouge, ent = _add_generations(acc, set_name, ev, gen, rows, entry)
    if score is not None:
        res = _add_scores(set_name, score, rouge, rows, entry)
        acc.tofu_metrics[set_name] = res
        if acc.closer_look:
            _add_closer_look(acc, set_name, res, rouge, ent, rows)
    acc.tofu["sets"][set_name] = entry
    acc.per_item[set_name] = rows


def _add_generations(acc: _Assembly, set_name: str, ev, gen: dict, rows: list[dict], entry: dict):
    """ROUGE, token entropy and refusals of the set's generations; returns (ROUGE-L, entropy) for later steps."""
    n = len(ev.rows)
    gens = [gen[i]["generation"] for i in range(n)]
    rouge = M.rouge_recall(gens, [r["answer"] for r in ev.rows])
    rouge1 = M.rouge_recall(gens, [r["answer"] for r in ev.rows], kind="rouge1")
    ent = M.token_entropy([acc.tokenizer(g, add_special_tokens=False)["input_ids"] for g in gens])
    refusal = M.refusal_rate(gens, acc.refusals)
    for i in range(n):
        rows[i].update(generation=gens[i], n_new_tokens=gen[i]["n_new_tokens"],
                       rougeL_recall=float(rouge.values[i]), rouge1_recall=float(rouge1.values[i]),
                       token_entropy=float(ent.values[i]), refusal=bool(refusal.values[i]))
    entry["rougeL_recall"] = rouge.value
    entry["rouge1_recall"] = rouge1.value
    acc.extra.setdefault("refusal_rate", {})[set_name] = refusal.value
    return rouge, ent


def _answer_checks(acc: _Assembly, sets: dict, token_id: int | None, refusal: str | None) -> None:
    """What the model says on the forget set (the chosen refusal, well-formed refusals, the token
    repeated) and whether the token turns up in the other sets' answers: the checks ``unierase
    audit``, the demo and the benchmarks also report."""
    from ..refusals import answer_checks

    gens = {name: complete(acc.stage_data, f"generate.{name}", len(sets[name].rows)) for name in SET_NAMES}
    forget = gens["forget"]
    if forget is None or any("token_ids" not in item for g in gens.values() if g for item in g.values()):
        return  # generations missing, or from a run before token ids were kept
    items = [forget[i] for i in range(len(forget))]
    others = [g[i]["token_ids"] for name, g in gens.items() if name != "forget" and g for i in range(len(g))]
    acc.extra["answer_checks"] = answer_checks([it["generation"] for it in items], refusal=refusal,
                                               erased_ids=[it["token_ids"] for it in items], other_ids=others,
                                               token_id=token_id)


def _add_scores(set_name: str, score: dict, rouge, rows: list[dict], entry: dict) -> dict:
    """The TOFU set metrics from the scored likelihoods (and ROUGE-L when generated); returns them."""
    n = len(rows)
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
    return res


def _add_closer_look(acc: _Assembly, set_name: str, res: dict, rouge, ent, rows: list[dict]) -> None:
    """The closer-look set metrics: TOFU's, plus cosine similarity and entailment where those stages are complete."""
    n = len(rows)
    cos = complete(acc.stage_data, f"cosine.{set_name}", n)
    cos_m = None if cos is None else M.Metric(np.array([cos[i] for i in range(n)]), float(np.mean([cos[i] for i in range(n)])))
    nli = complete(acc.stage_data, f"nli.{set_name}", n)
    nli_m = None if (nli is None or rouge is None) else M.entailment_share([nli[i] for i in range(n)], rouge.values)
    cl = suites.closer_look_set(set_name, tofu=res, token_entropy=ent, cosine=cos_m, entailment=nli_m)
    acc.cl_metrics[set_name] = cl
    acc.closer["sets"][set_name] = {k: (None if v is None else float(v.value)) for k, v in cl.items()}
    for i in range(n):
        rows[i]["closer_look_truth_ratio"] = float(cl["truth_ratio"].values[i])
        if cos_m is not None:
            rows[i]["cosine_similarity"] = float(cos_m.values[i])
        if nli is not None:
            rows[i]["nli_label"] = nli[i]


def _headlines(acc: _Assembly, retain_ratios, retain_source) -> None:
    """The headline TOFU numbers (model utility, forget quality) and the closer look's."""
    tofu = acc.tofu
    tofu["model_utility"] = suites.tofu_model_utility(tofu["sets"])
    tofu["forget_quality"] = None
    if "forget" in acc.tofu_metrics and retain_ratios is not None:
        tofu["forget_quality"] = M.forget_quality(acc.tofu_metrics["forget"]["ratios"], retain_ratios)
    tofu["forget_quality_against"] = retain_source
    if acc.closer_look:
        acc.closer.update(suites.closer_look_headline(acc.cl_metrics))


def _paraphrase_leakage(acc: _Assembly, ev) -> None:
    """How much of the forget answers the paraphrased forget questions still draw out (when generated)."""
    para = complete(acc.stage_data, "generate.forget_paraphrased", len(ev.rows))
    if para is None:
        return
    gens = [para[i]["generation"] for i in range(len(ev.rows))]
    leak = M.rouge_recall(gens, [r["answer"] for r in ev.rows])
    ref = M.refusal_rate(gens, acc.refusals)
    acc.extra["paraphrase_leakage"] = {"rougeL_recall": leak.value, "refusal_rate": ref.value,
                                       "original_question_rougeL_recall": acc.tofu["sets"]["forget"].get("rougeL_recall")}
    for i, row in enumerate(acc.per_item["forget"]):
        row.update(paraphrased_question=ev.rows[i]["paraphrased_question"], paraphrased_generation=gens[i],
                   paraphrased_rougeL_recall=float(leak.values[i]), paraphrased_refusal=bool(ref.values[i]))


def _retain_unchanged(acc: _Assembly, reference_generations, reference_source) -> None:
    """The share of retain answers unchanged against a reference model's (when given and generated)."""
    retain = acc.per_item["retain"]
    if reference_generations is None or "generation" not in (retain[0] if retain else {}):
        return
    gens = [r["generation"] for r in retain]
    unchanged = M.unchanged_share(gens, reference_generations)
    acc.extra["retain_unchanged_share"] = unchanged.value
    acc.extra["retain_unchanged_against"] = reference_source
    for i, row in enumerate(retain):
        row["reference_generation"] = reference_generations[i]
        row["unchanged"] = bool(unchanged.values[i])


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
