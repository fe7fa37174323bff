"""Human-readable reports of an evaluation summary: Markdown and an optional bar chart."""

from __future__ import annotations

from pathlib import Path

from .data import SET_NAMES, SET_TITLES


def _f(x, digits: int = 4) -> str:
    if x is None:
        return "absent"
    if isinstance(x, float) and (abs(x) < 1e-3 and x != 0):
        return f"{x:.3e}"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(summary: dict) -> str:
    tofu = summary.get("tofu") or {}
    sets = tofu.get("sets", {})
    prompt = summary.get("prompt", {})
    items = summary.get("items", {})
    out = [
        f"# TOFU evaluation: {summary.get('model')}",
        "",
        f"- Forget split: **{summary.get('forget_split')}**; data: `{summary.get('data')}`",
        "- Items: " + ", ".join(f"{SET_TITLES[s]} {items.get(s)}" for s in SET_NAMES) + " "
        f"({summary.get('items_note')})",
        f"- Greedy generation, at most {summary.get('generation', {}).get('max_new_tokens')} new tokens; "
        f"prompt format `{prompt.get('format')}`, chat template sha256 `{(prompt.get('chat_template_sha256') or '-')[:16]}`, "
        f"date string pinned to `{prompt.get('date_string')}`",
        f"- Model fingerprint `{summary.get('model_fingerprint')}`"
        + ("" if summary.get("complete") else " — **incomplete: evaluation still running or interrupted**"),
        "",
        "## TOFU (open-unlearning semantics)",
        "",
        f"**Model Utility {_f(tofu.get('model_utility'))}** · **Forget Quality {_f(tofu.get('forget_quality'))}**"
        + (f" (KS test against {tofu.get('forget_quality_against')})" if tofu.get("forget_quality_against") else ""),
        "",
        _table(["Set", "Probability", "ROUGE-L recall", "Truth ratio", "Exact memorisation", "Extraction strength", "n"],
               [[SET_TITLES[s], _f(sets.get(s, {}).get("probability")), _f(sets.get(s, {}).get("rougeL_recall")),
                 _f(sets.get(s, {}).get("truth_ratio")), _f(sets.get(s, {}).get("exact_memorisation")),
                 _f(sets.get(s, {}).get("extraction_strength")), str(sets.get(s, {}).get("n"))] for s in SET_NAMES]),
        "",
        "Truth ratio: forget = mean min(R, 1/R); other sets = mean max(0, 1 − R), R = P̄(perturbed)/P̄(correct), "
        "correct = paraphrased answer (forget, retain) or answer (real authors, world facts). Probability on real "
        "authors / world facts is normalised over the answer options.",
    ]
    cl = summary.get("closer_look")
    if cl:
        cls = cl.get("sets", {})
        out += [
            "",
            "## closer-look family",
            "",
            f"**Forget Efficacy {_f(cl.get('forget_efficacy'))}** · **Model Utility (18 terms) {_f(cl.get('model_utility_18'))}**",
            "",
            f"Without the absent terms: Forget Efficacy {_f(cl.get('forget_efficacy_available'))} "
            f"(terms: {', '.join(cl.get('forget_efficacy_available_terms') or [])}); Model Utility "
            f"{_f(cl.get('model_utility_available'))} ({cl.get('model_utility_available_terms')} of 18 terms). "
            "These are not the papers' metrics.",
            "",
            _table(["Set", "ROUGE-L recall", "Probability", "Truth ratio", "Token entropy", "Cosine", "Entailment"],
                   [[SET_TITLES[s]] + [_f(cls.get(s, {}).get(m)) for m in
                                       ("rougeL_recall", "probability", "truth_ratio", "token_entropy", "cosine_similarity", "entailment")]
                    for s in SET_NAMES]),
        ]
    out += _beyond_the_papers(summary.get("extra") or {})
    notes = summary.get("notes") or []
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    timing = summary.get("timing", {})
    out += ["", "## Run", "",
            f"- Wall time of this run {_f(timing.get('this_run_s'), 1)} s; stage times (s, including earlier runs): "
            + ", ".join(f"{k} {v:.1f}" for k, v in (timing.get("stages_s") or {}).items()),
            "- CPU time per stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in (timing.get("stages_cpu_s") or {}).items()),
            f"- Peak memory {_f(timing.get('peak_rss_mib'), 0)} MiB, {timing.get('threads')} threads; "
            f"scoring mode {summary.get('scoring', {}).get('mode')}, batch size {summary.get('scoring', {}).get('batch_size')}, "
            f"dtype {summary.get('scoring', {}).get('dtype')}",
            "", "Prompt example:", "", "```", str(prompt.get("example", "")), "```", ""]
    return "\n".join(out)


def _beyond_the_papers(extra: dict) -> list[str]:
    """The report's lines on what goes beyond TOFU and the closer look: refusals, what the model says, leakage."""
    out = ["", "## Beyond the papers", ""]
    rr = extra.get("refusal_rate", {})
    if rr:
        out.append("- Refusal rate: " + ", ".join(f"{SET_TITLES[s]} {_f(rr.get(s))}" for s in SET_NAMES if s in rr))
    ac = extra.get("answer_checks")
    if ac:
        out.append(f"- What the model says (`refusals.answer_checks`): forget answers exactly the chosen refusal "
                   f"{_f(ac.get('chosen_refusal'))}, well-formed refusals {_f(ac.get('well_formed_refusals'))}, "
                   f"the unlearning token more than once {_f(ac.get('token_repeated'))}; other sets' answers holding "
                   f"the token within {ac.get('stray_window')} tokens {_f(ac.get('token_in_other_answers'))} "
                   f"({ac.get('other')} answers)")
    mi = extra.get("membership")
    if mi:
        leak = mi.get("privleak") or {}
        out.append(f"- Membership inference ({mi.get('members')} forget vs {mi.get('non_members')} holdout answers; AUC "
                   f"0.5 = cannot tell them apart): " + ", ".join(
                       f"{a} AUC {_f(v)}" + (f" (PrivLeak {_f(leak[a])})" if a in leak else "")
                       for a, v in (mi.get("auc") or {}).items()))
    pl = extra.get("paraphrase_leakage")
    if pl:
        out.append(f"- Paraphrase leakage (forget set, paraphrased questions): ROUGE-L recall {_f(pl.get('rougeL_recall'))} "
                   f"(original questions {_f(pl.get('original_question_rougeL_recall'))}), refusal rate {_f(pl.get('refusal_rate'))}")
    if "retain_unchanged_share" in extra:
        out.append(f"- Retain answers unchanged from {extra.get('retain_unchanged_against')}: {_f(extra['retain_unchanged_share'])}")
    return out


def render_png(summary: dict, path: str | Path) -> None:
    """Bar chart of the TOFU per-set numbers (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = (summary.get("tofu") or {}).get("sets", {})
    metrics = [("probability", "Probability"), ("rougeL_recall", "ROUGE-L recall"), ("truth_ratio", "Truth ratio")]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.25
    for k, (key, label) in enumerate(metrics):
        vals = [sets.get(s, {}).get(key) or 0.0 for s in SET_NAMES]
        ax.bar([i + (k - 1) * width for i in range(len(SET_NAMES))], vals, width, label=label)
    ax.set_xticks(range(len(SET_NAMES)), [SET_TITLES[s] for s in SET_NAMES])
    ax.set_ylim(0, 1)
    tofu = summary.get("tofu") or {}
    ax.set_title(f"{summary.get('forget_split')}: MU {_f(tofu.get('model_utility'), 3)}, FQ {_f(tofu.get('forget_quality'), 3)}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
