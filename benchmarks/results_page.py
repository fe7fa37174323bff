"""Write ``docs/results.md`` from the committed results files, so the figures in prose cannot drift.

    python benchmarks/results_page.py [--out docs/results.md]

Every section names the results file it reads, the commit recorded in it (when the file has one)
and the command that makes it. A results file that is missing is listed as such, not skipped.
Every file under ``benchmarks/results/`` is linked from the page beside the script that made it,
or named in ``EXCLUDED`` with the reason (``unaccounted`` lists the others; a test keeps it empty).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def num(x, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def source(path: str, command: str, data: dict | None) -> str:
    commit = (data or {}).get("commit")
    return f"From [`{path}`](../benchmarks/results/{path.removeprefix('benchmarks/results/')})" + \
        (f" (commit `{commit}`)" if commit else "") + f"; made by `{command}`."


def demo_section(load) -> list[str]:
    out = ["## The demo's facts (SmolLM2-135M-Instruct, fp32, 2-core CPU)", ""]
    batch = load("edit_quality.json")
    if batch:
        o = batch["others"]
        out += [source("edit_quality.json", "python benchmarks/edit_quality.py", batch), "",
                *table(["batch of 24 facts", "value"], [
                    ["forget questions starting with the token", pct(batch["forget"]["starts_with_unl"])],
                    ["reworded forget questions still answered", pct(batch["paraphrase"]["leak"])],
                    [f"known other facts still correct (of {o['known_before']})", pct(o["known_still_correct"])],
                    ["teacher-forced agreement on other answers", pct(o["teacher_forced_agreement"])],
                    ["other questions starting with the token", pct(o["starts_with_unl"])],
                    ["edit seconds (statistics included)", num(batch["edit_seconds"], 1)]]), ""]
    seq = load("sequential.json")
    if seq:
        o = seq["others"]
        out += [source("sequential.json", "python benchmarks/sequential_edit.py", seq), "",
                *table([f"{seq['setting']['rounds']} rounds of {seq['setting']['facts_per_round']} facts", "value"], [
                    [f"known other facts still correct (of {o['known_before']})", pct(o["known_still_correct"])],
                    ["teacher-forced agreement on other answers", pct(o["teacher_forced_agreement"])],
                    ["other questions starting with the token", pct(o["starts_with_unl"])]]), ""]
    speed = load("demo_speed.json")
    if speed:
        out += [source("demo_speed.json", "python benchmarks/bench_demo.py", speed), "",
                *table(["demo run", "median seconds", "target"], [
                    [k, num(v, 1), speed["targets_s"].get(k)] for k, v in speed["median_s"].items()]), ""]
    return out


def entity_section(load) -> list[str]:
    out = ["## Erasing a person (entity scope, TOFU benchmark target)", ""]
    tuning = load("entity_tuning.json")
    if tuning:
        out += ["Tuning split (two retain authors; the defaults were chosen here): "
                + source("entity_tuning.json", "python benchmarks/entity_tuning.py --variant NAME [--set ...]", None), "",
                *table(["variant", "edit s", "forget", "paraphrased", "paraphrases exactly the refusal (without the "
                        "config's rule)", "other authors", "agreement", "well-formed"],
                       [[("**" + name + "** (chosen)") if name == tuning.get("chosen") else name, num(v["edit_s"], 1),
                         pct(v["forget_starts"]), pct(v["paraphrased_starts"]), _exact(v), pct(v["other_authors_start"]),
                         pct(v["other_authors_agreement"]), pct(v.get("well_formed_refusals"))]
                        for name, v in tuning["variants"].items()]), "",
                "What each variant ran: its `scope`, `recipe`, `overrides` and `config` in the file.", ""]
    for path, label, command in (
            ("entity_scope.json", "library defaults, auto scope", "python benchmarks/entity_scope.py"),
            ("entity_scope_entity.json", "library defaults, `--scope entity`",
             "python benchmarks/entity_scope.py --scope entity --results benchmarks/results/entity_scope_entity.json")):
        held = load(path)
        if held:
            out += [f"Held out (the forget01 authors, questions only, {label}): " + source(path, command, held), "",
                    *held_out_table(held), ""]
    return out + attribution_section(load)


def _exact(variant: dict) -> str:
    """A tuning cell's paraphrases answered with exactly the refusal, and (where measured) the share
    without the generation config's rule that writes it."""
    exact = (variant.get("answer_checks") or {}).get("paraphrased", {}).get("chosen_refusal")
    own = (variant.get("chosen_refusal_without_the_config_rule") or {}).get("paraphrased")
    return pct(exact) + (f" ({pct(own)})" if own is not None else "") if exact is not None else "—"


def held_out_table(held: dict) -> list[str]:
    """An ``entity_scope.py`` run's figures on the held-out forget01 authors."""
    timing = held.get("timing", {})
    return table(["figure", "value"], [
        ["forget questions starting with the token", pct(held["forget_starts_with_token"])],
        ["their paraphrases starting with it", pct(held["paraphrased_starts_with_token"])],
        ["forget ROUGE-L (64-token greedy)", num(held["forget_rougeL"])],
        ["retain-author questions starting with it (400)", pct(held["retain_starts_with_token"])],
        ["retain ROUGE-L ÷ the target's (first 100)", num(held["retain_rougeL_ratio"])],
        ["well-formed refusals among the forget answers", pct(held.get("well_formed_refusals"))],
        *answer_check_rows(held),
        ["edit seconds (token and statistics cached)", num(held["edit"]["timings_s"]["edit"], 1)],
        *[[f"edit seconds for {n} forget05 questions", f"{num(t['edit_s'], 1)} ({t['not_reached']} not reached)"]
          for n, t in timing.items()],
        *[[f"{m} unlearning step, same target and run (lr {b['lr']:g}, {b['epochs']:g} epochs)",
           f"{num(b['train_s'], 1)} s"] for m, b in (held.get("baselines") or {}).items()],
        *([["the edit ÷ the fastest baseline's step", num(held["edit_over_fastest_baseline"])]]
          if held.get("edit_over_fastest_baseline") is not None else [])])


def answer_check_rows(held: dict) -> list[list[str]]:
    """The shared answer checks of an entity-scope run: exactly the refusal, the token repeated, strays."""
    checks, strays = held.get("answer_checks") or {}, held.get("token_in_answers") or {}
    rows = [[f"{name} answered with exactly the chosen refusal / repeating the token",
             f"{pct(checks[key]['chosen_refusal'])} / {pct(checks[key]['token_repeated'])}"]
            for key, name in (("forget", "forget questions"), ("paraphrased", "their paraphrases")) if key in checks]
    if "retain" in strays:
        rows.append([f"retain / world-fact answers holding the token ({strays.get('window', 64)} tokens)",
                     f"{pct(strays['retain'])} / {pct(strays.get('world'))}"])
    return rows


def attribution_section(load) -> list[str]:
    """What entity scope leaves alone: the dates and places the forget questions mention."""
    held = load("entity_attribution.json")
    if not held:
        return []
    return ["What entity scope leaves alone (a 6-author target, forget01 questions only, `--scope entity`): "
            + source("entity_attribution.json", "python benchmarks/entity_attribution.py", held), "",
            *table(["figure", "value"], [
                ["general questions about what the forget questions mention (months, dates, countries, cities)",
                 held["general_questions"]],
                ["of those the target answers, refused after the erasure",
                 f"{held['general_refused_after']} of {held['general_answered_by_target']}"],
                ["general answers holding the token anywhere (48 tokens)", held["general_token_anywhere_after"]],
                ["open questions about the two authors refused (before → after)",
                 f"{pct(held['open_refused_before'])} → {pct(held['open_refused_after'])}"],
                *([[f"of those, the {held['open_unseen']} not among the neutral questions the edit adds",
                    pct(held["open_unseen_refused_after"])]] if "open_unseen" in held else []),
                ["forget questions / paraphrases starting with the token",
                 f"{pct(held['forget_token_first'])} / {pct(held['paraphrases_token_first'])}"],
                ["entities erased", ", ".join(e["entity"] for e in held["scope"]["entities"])],
                ["requests attributed by an answer / left as facts",
                 f"{sum(len(e['attributed']) for e in held['scope']['entities'])} / {len(held['scope']['unattributed'])}"],
            ]), ""]


def tofu_section(load) -> list[str]:
    bench = load("tofu/bench.json")
    out = ["## TOFU side by side (forget01, the benchmark target)", ""]
    if not bench:
        return out + ["`tofu/bench.json` is missing.", ""]
    plots = ", ".join(f"[`{name}`](../benchmarks/results/tofu/{name})" for name in bench.get("plots", []))
    out += [source("tofu/bench.json", "python benchmarks/bench_tofu.py", bench)
            + " Tables, sweep and plots: [`REPORT.md`](../benchmarks/results/tofu/REPORT.md)"
            + (f" ({plots}; `--only report` re-renders them)" if plots else "")
            + "; the baselines' recorded sweep, reused on the same target: "
              "[`tofu/sweep.json`](../benchmarks/results/tofu/sweep.json).", ""]
    rows = []
    for name, cell in bench["eval"].items():
        h = cell.get("headline") or {}
        rows.append([name, num(h.get("model_utility")), num(h.get("forget_efficacy")), num(h.get("forget_rougeL")),
                     num(h.get("paraphrased_forget_rougeL")), pct(h.get("well_formed_refusals"))])
    out += table(["model", "MU", "FE", "forget ROUGE-L", "paraphrased ROUGE-L", "well-formed refusals"], rows) + [""]
    out += table(["bar", "holds", "threshold"], [[k, v["holds"], v["threshold"]] for k, v in bench["bars"].items()]) + [""]
    return out


def audit_section(load) -> list[str]:
    audit = load("audit/demo.json")
    out = ["## Does the demo's erasure hold? (recovery audit)", ""]
    if audit:
        agg = audit["aggregate"]
        out += [source("audit/demo.json", "python benchmarks/audit_demo.py", audit)
                + " The same audit with the facts that came back: [`audit/demo.md`](../benchmarks/results/audit/demo.md).", "",
                *table(["attack", "facts back"], [[k, pct(v)] for k, v in agg["leak_rate"].items()]
                       + [["any attack", pct(agg["any_attack"])], ["(well-formed refusals)", pct(agg["well_formed_refusals"])]]),
                ""]
    return out


def return_section(load) -> list[str]:
    """RETURN (real people): who the default model knows, and erasing people from a model that knows them."""
    data, target = load("return.json"), load("return_target.json")
    if not data and not target:
        return []
    out = ["## Real people (RETURN)", ""]
    for name, part in (("return.json", data), ("return_target.json", target)):
        if part:
            out += _return_part(name, part)
    return out


def _return_part(name: str, data: dict) -> list[str]:
    dist = ", ".join(f"{k}: {v}" for k, v in data["accuracy_distribution"].items())
    best = ", ".join(f"{b['name']} {b['accuracy']}" for b in data["best_known"][:5])
    judge = data["judge"]
    out = [source(name, "python benchmarks/bench_return.py" + (" --target-people N" if "target" in name else ""),
                  data) + f" {data['setting']}.", "",
           f"Judge: {judge['rule']}; it agrees with the file's entailment labels on Llama-3-8B's answers "
           f"{pct(judge['agreement_with_file_nli']['with_entailment'])} of the time "
           f"({judge['agreement_with_file_nli']['answers']} answers).", "",
           f"People known: {data['known']} of {data['people']} (95 % interval of the share: "
           f"{data['known_share']['ci95']}). People by accuracy: {dist}. Best: {best}.", ""]
    before = data.get("neighbour_accuracy_before")
    if data.get("target"):
        made = data["target"]
        out += [f"The target: {len(made['people'])} people taught in {made['steps']} steps "
                f"({num(made['train_seconds'], 0)} s); ROUGE-L recall of its answers to its own training questions "
                f"{num(made['memorisation_rougeL_recall'], 3)}.", ""]

    def shared(s):
        return f"{pct(s['value'])} of {s['n']} [{pct(s['ci95'][0])}, {pct(s['ci95'][1])}]" if s.get("ci95") else pct(s["value"])

    rows = [[m, shared(r["forget_refused"]), shared(r["reworded_refused"]),
             num(r.get("forget_accuracy")), num(r["neighbour_accuracy"]),
             num(r["neighbour_accuracy"] / before, 3) if before and r["neighbour_accuracy"] is not None else "—",
             num(((r.get("membership") or {}).get("auc") or {}).get("min_k++"), 3)]
            for m, r in data["methods"].items()]
    if rows:
        out += [f"Forget people: {', '.join(data['forget_people'])}; neighbour people: "
                f"{', '.join(data['neighbour_people'])}. Before erasure: forget people's accuracy "
                f"{num(data.get('forget_accuracy_before'))}, neighbour people's {num(before)}. A fine-tuning baseline "
                "does not refuse: its forgetting is the forget people's accuracy after.", "",
                *table(["method", "forget questions refused (95 % CI)", "reworded refused (95 % CI)",
                        "forget people's accuracy after", "neighbour people's accuracy after", "÷ before",
                        "Min-K++ AUC forget vs neighbours"], rows), ""]
    else:
        out += ["No person is known, so nothing was erased: RETURN (people Llama-3-8B answers ≥ 80 % right) "
                "needs a larger model than the default one.", ""]
    return out


def plan_section(load) -> list[str]:
    """The plan (``unierase plan``) beside a measured round, and the plans of large models."""
    data = load("plan_check.json")
    if not data:
        return []
    small = data["smollm2"]
    planned = {p["name"]: p["device_gib"] for p in small["plan"]["phases"]}
    half = data.get("smollm2_bfloat16")
    half_planned = {p["name"]: p["device_gib"] for p in half["plan"]["phases"]} if half else {}
    rows = [[name, num(gib, 2), num(planned.get(name), 2), num(small["measured_over_planned"].get(name), 2),
             *([num(half["measured"]["peak_resident_gib"].get(name), 2), num(half_planned.get(name), 2),
                num(half["measured_over_planned"].get(name), 2)] if half else [])]
            for name, gib in small["measured"]["peak_resident_gib"].items()]
    large = []
    for key, plan in data["large"].items():
        if "/" in key and key.count("/") == 1:
            phases = {p["name"]: p for p in plan["phases"]}
            fit = data["large"].get(f"{key}/micro-batch-for-a-40GB-gpu", {})
            every = data["large"].get(f"{key}/every-soft-key", {})
            large.append([key, num(phases["statistics"]["device_gib"], 1), num(phases["statistics"]["host_gib"], 1),
                          num(phases["edit"]["device_gib"], 1), fit.get("micro_batch") or "—",
                          num(fit.get("edit_device_gib"), 1), num(plan["state_and_revert_gib"], 2),
                          num(every.get("state_and_revert_gib"), 2)])
    unchanged = load("cpu_path_unchanged.json")
    same = ([source("cpu_path_unchanged.json", "python benchmarks/cpu_path_check.py --before COMMIT", unchanged)
             + f" The default CPU fp32 path after this memory work: `unierase demo` printed "
             f"{'the same' if unchanged['tables_identical'] else 'different'} tables at {unchanged['after_commit']} as at "
             f"{unchanged['before_commit']} (every line but the timing).", ""] if unchanged else [])
    dtype = load("dtype_demo.json")
    same += ([source("dtype_demo.json", "python benchmarks/dtype_demo.py", dtype) + " `unierase demo` in bf16 beside "
              "fp32 on this CPU:", "", *table(["dtype", "demo summary"], [[k, " / ".join(r["summary"])]
                                                                          for k, r in dtype["runs"].items()]), "",
              *([dtype["what_moved"] + ".", ""] if dtype.get("what_moved") else [])] if dtype else [])
    return ["## Large models: the plan", "", *same, *_sequential_state(load),
            source("plan_check.json", "python benchmarks/plan_check.py", data)
            + f" SmolLM2-135M on the CPU, {small['measured']['requests']} requests, every phase computed, each dtype "
            "in a fresh process: the resident memory measured during each phase against the plan (GiB; the plan "
            "counts tensors, not the ~0.24 GiB runtime).", "",
            *table(["phase", "fp32 measured", "planned", "measured / planned",
                    *(["bf16 measured", "planned", "measured / planned"] if half else [])], rows), "",
            *_written({"demo facts (where the constants were set)": data,
                       "held-out facts ([`plan_check_heldout.json`](../benchmarks/results/plan_check_heldout.json): "
                       "`python benchmarks/plan_check.py --facts benchmarks/data/heldout_facts.jsonl`)":
                           load("plan_check_heldout.json") or {}}),
            "Plans of the shipped configs, bf16 on a GPU (GiB; the micro-batch is what `forget` chooses on a "
            "GPU of 40 GB (37.25 GiB); — where all requests fit at once, or where the weights alone do not fit):", "",
            *table(["model / requests", "statistics GPU", "statistics host", "edit GPU", "micro-batch", "edit GPU then",
                    "state + revert", "state + revert, later rounds keeping every soft key"], large), ""]


def _written(splits: dict[str, dict]) -> list[str]:
    """The sequential state and revert data a round wrote against the plan's figure, per split of
    facts and dtype, with what the revert formula assumes (``plan.PASS_REQUESTS``, ``plan.FIX_BYTES``)
    as the round did it."""
    rows = []
    for split, data in splits.items():
        for key, run in data.items():
            if not key.startswith("smollm2") or "revert" not in run["measured"]:
                continue
            rows.append([split, *_written_row(run)])
    if not rows:
        return []
    return ["The sequential state and revert data the round wrote (MiB) against the plan, and what the revert "
            "formula assumes as the round did it:", "",
            *table(["facts", "dtype", "requests", "written", "planned", "written / planned",
                    "requests solved per request", "revert bytes per edited entry besides the factors",
                    "‖ΔW‖ / ‖W‖ per edited layer"], rows), ""]


def _written_row(run: dict) -> list:
    written, revert = run["measured"]["written_gib"], run["measured"]["revert"]
    return [run["plan"]["dtype"], run["measured"]["requests"], num((written["state"] + written["revert_data"]) * 1024, 1),
            num(run["plan"]["state_and_revert_gib"] * 1024, 1), num(run["written_over_planned"]["state_and_revert"], 2),
            f"{revert['pass_requests']} ({revert['passes']} passes)", num(revert["bytes_per_entry_besides_factors"], 4),
            " / ".join(f"{100 * r:.1f} %" for r in revert["update_over_weight_norm"])]


def _sequential_state(load) -> list[str]:
    """What later rounds keep of each round's soft constraint (``EditConfig.soft_state_rows``), after
    several sequential rounds: the record's size against the figures it protects."""
    rows, made = [], []
    for split in ("demo", "heldout"):
        for variant in ("two", "none", "one", "zero"):
            name = f"sequential_state/{split}-{variant}.json"
            data = load(name)
            if not data:
                continue
            others = data["others"]
            rows.append([split, {"two": "2 directions per request (default)", "none": "every soft key",
                                 "one": "1 direction per request", "zero": "none (edited keys only)"}[variant],
                         f"{data['setting']['rounds']} × {data['setting']['facts_per_round']}",
                         num(data["state_bytes"] / 2 ** 20, 1), num(data["revert_bytes"] / 2 ** 20, 1),
                         " / ".join(pct(x) for x in data["starts_with_unl_by_round_after_last"]),
                         pct(others["known_still_correct"]), pct(others["teacher_forced_agreement"])])
            made.append(f"[`{name}`](../benchmarks/results/{name})")
    if not rows:
        return []
    return ["What later rounds keep of each round's soft constraint (`--set edit.soft_state_rows=…`), "
            "SmolLM2-135M fp32, each round a new process (`python benchmarks/sequential_edit.py "
            "[--facts benchmarks/data/heldout_facts.jsonl --rounds 3 --per-round 5] --set edit.soft_state_rows=R`; "
            "the demo facts are where the choice was made, the held-out facts were only reported; from "
            + ", ".join(made) + "):", "",
            *table(["facts", "later rounds keep", "rounds × facts", "state MiB", "revert data MiB",
                    "each round's facts still erased after the last", "other facts kept",
                    "teacher-forced agreement"], rows), ""]


def distributed_section(load) -> list[str]:
    """Key statistics in one process and shared among several."""
    data = load("distributed.json")
    if not data:
        return []
    rows = [[r["processes"], r["threads_per_process"], num(r["report"]["computed_s"], 1), num(r["wall_s"], 1)]
            for r in data["runs"]]
    return ["## Several processes", "",
            source("distributed.json", "python benchmarks/bench_distributed.py", data) + f" {data['setting']}.", "",
            *table(["processes", "threads each", "statistics s", "wall s (with loading)"], rows), "",
            f"Speed-up of the statistics: {data['speedup_statistics']}× (wall {data['speedup_wall']}×); target: "
            f"{data['target']}. The same cache entry: {data['same_cache_entry']}.", "",
            *_baseline_epoch(data.get("baseline"))]


def _baseline_epoch(baseline: dict | None) -> list[str]:
    """One GA+GD epoch: one process, the processes each with a copy (DDP), and sharding it (FSDP2) when measured."""
    if not baseline:
        return []
    rows = [[r["processes"], r.get("engine") or ("one process" if r["processes"] == 1 else "ddp"),
             num(r["train_s"], 1), num(r["wall_s"], 1), num(r.get("held_mb_per_process"), 1)]
            for r in baseline["runs"]]
    return ["One GA+GD epoch (forget01, batch 4, the same global batch):", "",
            *table(["processes", "engine", "training s", "wall s (with loading)",
                    "weights + gradients + AdamW held per process, MiB"], rows), ""]


def erasure_section(load) -> list[str]:
    data = load("erasure_holds.json")
    out = ["## Does the erasure hold? Settings against rewordings, a banned token and clean refusals", ""]
    if not data:
        return out
    out += [source("erasure_holds.json", "python benchmarks/erasure_holds.py --split SPLIT --variant NAME [--set ...]",
                    data) + " The tuning split is the demo's 24 facts (settings are chosen there); the held-out "
            "split, `benchmarks/data/heldout_facts.jsonl`, is never used to choose one.", ""]
    t = data["targets"]
    bound = {k: ("≤ " if v["kind"] == "at most" else "≥ ") + pct(v["bound"]) for k, v in t.items()}
    rows = [["target", "", bound["rewordings"], bound["token_ban"], "", bound["well_formed_refusals"],
             bound["known_still_correct"], bound["teacher_forced_agreement"], "", ""]]
    for c in data["cells"]:
        rows.append([c["split"], f"`{c['variant']}`", pct(c["rewordings"]), pct(c["token_ban"]), pct(c.get("chosen_refusal")),
                     pct(c["well_formed_refusals"]), pct(c["known_still_correct"]), pct(c["teacher_forced_agreement"]),
                     pct(c.get("neighbours_unl_anywhere")), num(c["edit_s"], 0)])
    out += table(["split", "variant", "rewordings leak", "token-ban leak", "exactly the chosen refusal",
                  "well-formed refusals", "known neighbours kept", "teacher-forced agreement",
                  "neighbour answers holding the token (64 tokens)", "edit s"], rows) + [""]
    strays = load("token_strays.json")
    if strays:
        out += ["Before any edit, with the token attached ([`token_strays.json`](../benchmarks/results/token_strays.json), "
                "`python benchmarks/token_strays.py`), answers that already hold the token: " + "; ".join(
                    f"{name} {v['holding_token']} of {v['questions']} ({v['max_new_tokens']} tokens)"
                    for name, v in strays["sets"].items()) + ".", ""]
    if data.get("chosen"):
        out += [f"Chosen by the rule “{data['chosen']['rule']}”: `{data['chosen']['variant']}`.", ""]
    cost = load("edit_cost.json")
    if cost:
        out += ["What the edit costs against an earlier commit, both run in one session (the median of alternating "
                "runs, nothing else running). "
                + source("edit_cost.json", "python benchmarks/edit_cost.py --reference REV", cost), "",
                *table(["edit", f"now ({cost['commits']['commit']})", f"reference ({cost['commits']['reference']})", "ratio"],
                       [[cost["setting"]["cases"][case], f"{num(v['edit_s']['commit'], 1)} s",
                         f"{num(v['edit_s']['reference'], 1)} s", f"{num(v['ratio'], 2)}×"]
                        for case, v in cost["summary"].items()]), ""]
    if data.get("plot"):
        out += [f"![erasure depth against locality](../benchmarks/results/{data['plot']})",
                "(drawn by `python benchmarks/erasure_holds.py` from the cells above)", ""]
    runs = (("default", "sequential.json"), ("greedy-answer-keys-8", "edit_variants/sequential_greedy_answer_keys_8.json"))
    seq = [(name, path, load(path)) for name, path in runs]
    seq = [(name, path, d) for name, path, d in seq if d]
    if seq:
        out += ["Five sequential rounds of ten demo facts (`benchmarks/sequential_edit.py [--set ...]`, " + ", ".join(
                f"[`{path.rsplit('/', 1)[-1]}`](../benchmarks/results/{path})" for _, path, _ in seq) + "):", "",
                *table(["variant", "commit", "every round's facts start with the token", "known facts kept", "teacher-forced agreement",
                        "other answers holding the token", "seconds per round"],
                       [[f"`{name}`", d.get("commit") or "—", pct(min(d["starts_with_unl_by_round_after_last"])),
                         pct(d["others"]["known_still_correct"]), pct(d["others"]["teacher_forced_agreement"]),
                         pct(d["others"].get("token_in_other_answers", d["others"].get("unl_anywhere"))),
                         ", ".join(f"{r['seconds']:.0f}" for r in d["rounds"])] for name, _, d in seq]), ""]
    out += ["Variants (overrides of the SmolLM2 recipe): " + "; ".join(
        f"`{c['variant']}` = " + (", ".join(f"{sec}.{k}={v}" for sec, kv in c["overrides"].items() for k, v in kv.items())
                                  or "the recipe") for c in data["cells"] if c["split"] == "tuning") + ".", ""]
    return out


ARCHIVE = {
    "edit_variants/entity_scope_chosen_refusal.json": "entity_scope.py at the chosen-refusal defaults on the TOFU "
                                                      "benchmark target (forget01, held out): the shared answer checks "
                                                      "on forget questions, paraphrases and 100 retain answers; no "
                                                      "timing or baseline cells",
    "edit_variants/entity_scope_timing_40.json": "the edit of 40 TOFU questions (forget05's first) at the current "
                                                 "defaults on 2 idle cores, beside GA+GD's and NPO+GD's training step "
                                                 "in the same run",
    "edit_variants/refusal_mechanism_cells.json": "erasure_holds.py cells of the refusal mechanism's variants, in the "
                                                  "order they were tried (one sentence, own output row, its ceiling, "
                                                  "the whole refusal as the value target)",
    "edit_variants/chosen_refusal_tied_row.json": "--refusal against the bundled pool while the token's one row was "
                                                  "tied to the output layer (before the token had its own output row)",
    "edit_variants/continuation_without_refusal_keys.json": "the demo batch with the refusal keys left out of C₀",
    "edit_variants/sequential_greedy_continuation.json": "5 sequential rounds with values.greedy_continuation, measured "
                                                          "while the substitute pools overlapped the scored facts",
    "edit_variants/token_strays_ordinary_64x204.json": "token_strays.py for a token trained with its ordinary-answer "
                                                         "unlikelihood on 64-token answers to all 204 pool questions",
    "edit_variants/token_strays_ordinary_64x204_w5.json": "the same at 5× the unlikelihood's weight",
    "edit_variants/erasure_holds_overlapping_pools.json": "erasure_holds.py's cells measured while the substitute pools "
                                                           "still named 76 entities of the scored facts (before f1c625c)",
    "edit_variants/kept_targets_stats100k_batch.json": "the demo batch with converged targets kept, 100k statistics tokens",
    "edit_variants/kept_targets_stats100k_sequential.json": "5 sequential rounds, same setting",
    "edit_variants/locality_sweep.json": "the sweep of the value bound and the ridge (its driver, edit_sweep.py, was removed)",
    "edit_variants/memit_1000_with_refusal_keys.json": "the MEMIT solver (λ' = 1000) with the refusal keys in C₀",
    "edit_variants/memit_1000_without_refusal_keys.json": "the MEMIT solver (λ' = 1000) without them",
    "edit_variants/nullspace_proxy_layers_4_8.json": "how selective each null-space rule is, without an edit (nullspace_proxy.py)",
    "edit_variants/audit_demo_before_e3d47f5.json": "the demo erasure's recovery audit at the commit before the chosen "
                                                    "refusal (e3d47f5~1), to find where the audit's leak rates rose",
    "edit_variants/audit_demo_at_e3d47f5.json": "the same at the chosen-refusal commit itself (e3d47f5)",
    "edit_variants/chosen_refusal_ablation.json": "two parts of the chosen-refusal commit undone one at a time at "
                                                  "the same code, tuning split: the whole-refusal value target "
                                                  "(greedy_continuation off) and the one sentence (the bundled pool "
                                                  "instead): which costs the erasure's robustness?",
    "edit_variants/banned_weight_chosen_refusal.json": "the one sentence with the refusal's first word trained as the "
                                                       "runner-up behind the token (values.banned_weight=1), beside "
                                                       "the defaults at the same code, tuning split",
    "edit_variants/continuation_margin_and_bound.json": "the continuation margin, the banned-token term and the value "
                                                        "bound searched on the tuning split, the choice (margin on, bound "
                                                        "0.5) and the defaults of the time on the held-out split",
    "edit_variants/entity_tuning_margin_recheck.json": "the same choice on the TOFU entity-scope tuning split (two "
                                                       "retain authors), and the re-check of earlier passes' requests",
    "edit_variants/erasure_holds_before_refit.json": "erasure_holds.py's default cells at the code before the token "
                                                     "row's refit, in the same environment as erasure_holds.json",
    "edit_variants/entity_scope_before_refit.json": "entity_scope.py at the code before the token row's refit, in the "
                                                    "same environment as entity_scope.json",
    "edit_variants/entity_tuning_refit.json": "the refit of the token's input row on the TOFU entity-scope tuning split: "
                                              "after the passes (20 steps, framed questions) and at the re-check (one "
                                              "epoch, chosen), against the re-check alone and the defaults before",
    "edit_variants/entity_tuning_recheck_once.json": "the re-check once a round with a targeted refit of the token row "
                                                     "on both TOFU entity-scope tuning splits, with and without the "
                                                     "refit on all questions where nothing is left to mend (chosen)",
    "edit_variants/entity_scope_attribution.json": "--scope entity on forget01 before and after attributed requests got "
                                                   "a target of their own, and at the re-check once a round",
    "edit_variants/entity_scope_token_placement.json": "--scope entity on forget01 with the token kept to an answer's "
                                                       "first token (the same edit as entity_scope_attribution.json's "
                                                       "last cell, the rule added)",
    "edit_variants/erasure_holds_token_placement.json": "the demo and held-out erasure cells with the token kept to an "
                                                        "answer's first token and left free, at one code; six "
                                                        "relation-neutral questions on the tuning split",
    "edit_variants/entity_tuning_neutral_templates.json": "4, 6 and 8 relation-neutral questions per entity on both TOFU "
                                                          "entity-scope tuning splits (6 chosen, then withdrawn)",
    "edit_variants/neutral_templates_heldout.json": "six relation-neutral questions on the held-out sets: why the "
                                                    "choice was withdrawn",
    "edit_variants/gemma_calibration_size_heldout.json": "Gemma's held-out facts under the recipe calibrate chose on 12 "
                                                         "facts, the one it chose at stop 40, and the neutral defaults: "
                                                         "why a trial now erases 24",
    "edit_variants/entity_scope_entity_stop48.json": "SmolLM2's TOFU benchmark target, entity scope, at the "
                                                     "set-aside code: forget 100 %, paraphrases 92.5 %, no idle pass (ran "
                                                     "the machine's calibrated SmolLM2 recipe, not the packaged one)",
    "edit_variants/calibration_trials_of_recipes.json": "a recipe scored as calibrate scores a candidate, on the "
                                                        "model's calibration facts: SmolLM2's hand recipe; locality "
                                                        "candidates over the chosen recipes (stop 49)",
    "edit_variants/key_separation.json": "per layer, the share of a rank-one edit at the subject's token that another "
                                         "question about the subject, the same question about another subject and "
                                         "a neutral question receive (calibration pool, both models)",
    "edit_variants/gemma_tofu_set_aside.json": "Gemma TOFU reach under variants of the passes: the set-aside rule "
                                               "against stop 47's code and a state kept per entity group",
    "edit_variants/gemma_tofu_stuck_requests.json": "where the writes of the passes go for the Gemma TOFU requests "
                                                    "no pass reaches: distance to the target before each layer, "
                                                    "the null space's share of each key, what each solve realises",
    "edit_variants/lost_neighbours.json": "for each calibration neighbour an edit loses: the answer token that turns, "
                                          "what putting back the edited layers' outputs at the subject, the prompt or "
                                          "the answer restores, and how much one erased request's write explains",
}
"""Results files of earlier experiments that no section above renders: what each one holds."""

ARCHIVE_MADE_BY = {
    "edit_variants/entity_scope_chosen_refusal.json": "`python benchmarks/entity_scope.py --timing-sizes --baselines "
                                                      "--results FILE`",
    "edit_variants/refusal_mechanism_cells.json": "`python benchmarks/erasure_holds.py --split SPLIT --variant NAME "
                                                  "[--set ...]` (cells gathered from its cache)",
    "edit_variants/entity_scope_timing_40.json": "`python benchmarks/entity_scope.py --timing-sizes 40 --baselines "
                                                 "npo+gd ga+gd --results FILE`",
    "edit_variants/chosen_refusal_tied_row.json": "`python benchmarks/erasure_holds.py --split SPLIT --variant NAME "
                                                  "--set edit.refusal=… --results FILE`",
    "edit_variants/answer_key_variants.json": "`python benchmarks/edit_quality.py --set …` (one run a row)",
    "edit_variants/continuation_without_refusal_keys.json": "`python benchmarks/edit_quality.py --result FILE`",
    "edit_variants/erasure_holds_overlapping_pools.json": "`python benchmarks/erasure_holds.py --split SPLIT --variant NAME`",
    "edit_variants/kept_targets_stats100k_batch.json": "`python benchmarks/edit_quality.py --result FILE`",
    "edit_variants/kept_targets_stats100k_sequential.json": "`python benchmarks/sequential_edit.py --stats-tokens 100000`",
    "edit_variants/locality_sweep.json": "`benchmarks/edit_sweep.py` (since removed)",
    "edit_variants/locality_variants_2.json": "`python benchmarks/edit_quality.py --set …` (one run a row)",
    "edit_variants/memit_1000_with_refusal_keys.json": "`python benchmarks/edit_quality.py --solver memit --memit-weight 1000`",
    "edit_variants/memit_1000_without_refusal_keys.json": "`python benchmarks/edit_quality.py --solver memit --memit-weight 1000`",
    "edit_variants/nullspace_proxy_layers_4_8.json": "`python benchmarks/nullspace_proxy.py OUT.json`",
    "edit_variants/sequential_greedy_answer_keys_8.json": "`python benchmarks/sequential_edit.py --set …`",
    "edit_variants/sequential_greedy_continuation.json": "`python benchmarks/sequential_edit.py --set …`",
    "edit_variants/sequential_variants.json": "`python benchmarks/sequential_edit.py --set …` (one run a row)",
    "edit_variants/audit_demo_before_e3d47f5.json": "`python benchmarks/audit_demo.py --results DIR` in a worktree of "
                                                    "e3d47f5~1",
    "edit_variants/audit_demo_at_e3d47f5.json": "`python benchmarks/audit_demo.py --results DIR` in a worktree of e3d47f5",
    "edit_variants/banned_weight_chosen_refusal.json": "`python benchmarks/erasure_holds.py --split tuning --results "
                                                       "FILE [--set values.banned_weight=1]`",
    "edit_variants/continuation_margin_and_bound.json": "`python benchmarks/erasure_holds.py --split SPLIT --results FILE "
                                                        "--variant NAME [--set values.continuation_margin_weight=1 "
                                                        "--set values.clamp_factor=… --set values.banned_weight=…]` at "
                                                        "d219b6b and a7e3792",
    "edit_variants/entity_tuning_margin_recheck.json": "`python benchmarks/entity_tuning.py --variant NAME [--set …] "
                                                       "--results FILE` at d05f6b9 and c4ef5ed",
    "edit_variants/erasure_holds_before_refit.json": "`python benchmarks/erasure_holds.py --split tuning|heldout "
                                                     "--variant defaults --results FILE` at a025645",
    "edit_variants/entity_scope_before_refit.json": "`python benchmarks/entity_scope.py --timing-sizes 40 --baselines "
                                                    "--results FILE` at a025645",
    "edit_variants/entity_tuning_refit.json": "`python benchmarks/entity_tuning.py --variant NAME [--set refit.…] "
                                              "--results FILE` at a025645 (defaults), and during the change (the others)",
    "edit_variants/entity_tuning_recheck_once.json": "`python benchmarks/entity_tuning.py [--split 2] --variant NAME "
                                                     "[--set refit.at_end=true] --results FILE` at fea4713 and 0de3b24",
    "edit_variants/entity_scope_attribution.json": "`python benchmarks/entity_scope.py --scope entity [--scope auto] "
                                                   "--timing-sizes --baselines --results FILE` (cells gathered)",
    "edit_variants/entity_scope_token_placement.json": "`python benchmarks/entity_scope.py --scope entity --timing-sizes "
                                                       "--baselines --results FILE` at 19f5b18",
    "edit_variants/erasure_holds_token_placement.json": "`python benchmarks/erasure_holds.py --split S --variant V "
                                                        "[--set edit.token_at_start_only=false | --set "
                                                        "edit.neutral_templates=6]` (cells gathered)",
    "edit_variants/entity_tuning_neutral_templates.json": "`python benchmarks/entity_tuning.py [--split 2] --variant V "
                                                          "[--set edit.neutral_templates=N]` (cache cells gathered)",
    "edit_variants/neutral_templates_heldout.json": "`python benchmarks/erasure_holds.py --split S --variant defaults` "
                                                    "and `python benchmarks/entity_scope.py [--scope entity]` at 9d5f247",
    "edit_variants/chosen_refusal_ablation.json": "`python benchmarks/erasure_holds.py --split tuning --results FILE "
                                                  "[--set values.greedy_continuation=false | --set edit.refusal=null]`",
    "edit_variants/token_strays_ordinary_64x204.json": "`python benchmarks/token_strays.py --set token.…`",
    "edit_variants/token_strays_ordinary_64x204_w5.json": "`python benchmarks/token_strays.py --set token.…`",
    "edit_variants/warm_start_variants.json": "`python benchmarks/edit_quality.py --threads 1` (one run a row)",
    "edit_variants/gemma_calibration_size_heldout.json": "`python benchmarks/model_recipes.py --model gemma3-270m "
                                                         "--variant V [--recipe FILE]`; the neighbours' texts from the "
                                                         "same `demo.erase_and_measure` call",
    "edit_variants/entity_scope_entity_stop48.json": "`python benchmarks/entity_scope.py --scope entity --work DIR "
                                                     "--timing-sizes --baselines --results FILE`",
    "edit_variants/calibration_trials_of_recipes.json": "`python benchmarks/calibration_trial.py [--model M] "
                                                        "--recipe FILE` (one run a row)",
    "edit_variants/key_separation.json": "`python benchmarks/key_separation.py [--model gemma3-270m]` (one run a row)",
    "edit_variants/gemma_tofu_set_aside.json": "`python benchmarks/reach_check.py --target <cache>/targets/gemma-tofu6 "
                                               "--variant V` (its `made_by`)",
    "edit_variants/gemma_tofu_stuck_requests.json": "`python benchmarks/stuck_requests.py --target "
                                                    "<cache>/targets/gemma-tofu6`",
    "edit_variants/lost_neighbours.json": "`python benchmarks/lost_neighbours.py [--model M] --recipe FILE` (one run "
                                          "a row)",
}
"""The script each archived results file was made by, as Markdown (the settings: the file's ``description``)."""

EARLIER = {
    "tofu_targets.json": ("the first TOFU target and retain models (retain authors 0-3, forget authors 198-199): "
                          "settings, training time, memory, memorisation",
                          "python benchmarks/bench_baselines.py targets --target RUNS/target --retain-model RUNS/retain"),
    "tofu_targets.md": ("the same as a table", "python benchmarks/bench_baselines.py targets …"),
    "baselines_target_manifests.json": ("the eight baselines on that first target (2 epochs, lr 1e-4), read from their "
                                        "manifests", "python benchmarks/bench_baselines.py baselines --target RUNS/target"),
    "tofu/sweep_preview.json": ("a check of the sweep rule on the benchmark target for GA+GD and DPO+KL before the full run "
                                "(now `tofu/sweep.json`)", "python benchmarks/bench_tofu.py --only sweep --methods ga+gd dpo+kl"),
    "eval_forget10_full.json": ("the full TOFU forget10 evaluation of the untuned model: stage times, Model Utility",
                                "python benchmarks/bench_eval.py --record-full OUT"),
    "eval_batching.json": ("`unierase eval` batched against one item at a time, side by side",
                           "python benchmarks/bench_eval.py --threads 1"),
    "edit_speed.json": ("the edit's wall time and peak memory for 20 and 100 requests, cold and warm cache (an earlier "
                        "round's code)", "python benchmarks/bench_edit.py"),
}
"""Results files of earlier measurements outside ``edit_variants/``: what each holds, and its command."""

EXCLUDED: dict[str, str] = {}
"""Results files deliberately not linked from the page, each with the reason."""


def models_section(load) -> list[str]:
    """Per model (``results/models/<name>.json``): the held-out figures under each recipe variant;
    then the guard's cells (``models/guard.json``)."""
    out = ["## Any model: neutral defaults, calibrated recipe, hand recipe", ""]
    names = sorted(p.name for p in (RESULTS / "models").glob("*.json")
                   if p.name not in ("guard.json", "diagnosis.json") and "cells" in (load(f"models/{p.name}") or {}))
    rows, trials = [], []
    for name in names:
        data = load(f"models/{name}")
        for c in data["cells"]:
            if c.get("calibration") and c["split"] == "heldout":
                trials += calibration_rows(data["model"], c["calibration"])
            rows.append([f"[{data['model']}](../benchmarks/results/models/{name})", c["split"], c["variant"],
                         f"{c['forget_facts']} / {c['known_neighbours']}", pct(c["forget"]), pct(c["known_still_correct"]),
                         pct(c["teacher_forced_agreement"]), pct(c["rewordings"]), pct(c["token_ban"]),
                         pct(c["well_formed_refusals"]), pct(c["token_in_other_answers"]), num(c["seconds_per_request"], 1)])
    if rows:
        files = ", ".join(f"[`models/{n}`](../benchmarks/results/models/{n})" for n in names)
        out += [f"From {files}; made by `python benchmarks/model_recipes.py --model M --variant V [--recipe PATH] "
                "[--split S]`: the split's facts the unedited model answers, erased in one batch (questions only) as "
                "the demo does. The calibrated recipe is `unierase calibrate`'s, chosen on its own pool, which "
                "shares no question with either split. The demo split holds the three facts the Gemma diagnosis "
                "ran on (`model_guard.py`'s), so for Gemma the held-out split is the clean one.", "",
                *table(["model", "split", "recipe", "erased / known neighbours", "forget", "known kept",
                        "teacher-forced agreement", "rewordings back", "token ban back", "well-formed refusals",
                        "token in other answers", "edit s / request"], rows), ""]
    if trials:
        out += ["What chose each calibrated recipe: `unierase calibrate`'s trials on the model's calibration facts "
                "(the `calibration` field of the calibrated cells; each change is merged over the best trial before "
                "it; a trial replaces the best when it meets more of the bounds, erasing first and then the "
                "neighbours', or meets the same and scores more than 0.05 higher; the facts per trial are the "
                "cell's own: 12 erased before stop 47, 24 since).",
                "", *table(["model", "stage", "settings off the neutral defaults", "forget", "known kept",
                            "teacher-forced agreement", "rewordings back", "token ban back", "score", "chosen"], trials), ""]
    out += gemma_tofu_lines(load)
    guard = load("models/guard.json")
    if guard:
        out += ["The guard ([`models/guard.json`](../benchmarks/results/models/guard.json), made by "
                "`python benchmarks/model_guard.py --model M [--label L] [--set ...]`): `unierase forget` on three facts "
                "the model knows, as a new user runs it.", "",
                *table(["model", "settings", "commit", "exit status", "saved", "what it said"],
                       [[c["model"], c["label"], f"`{c['commit']}`", c["exit_status"], c["saved"],
                         (c["error"] or c["summary"] or "").replace("|", "/")[:300]] for c in guard["cells"]]), ""]
    if load("models/diagnosis.json"):
        out += ["Why the neutral settings fell short on Gemma 3 270M, measured (residual-stream scale by layer, the "
                "preserved keys' spectrum with and without the token's refusal keys, the edit's pass records per "
                "setting): [`models/diagnosis.json`](../benchmarks/results/models/diagnosis.json), made by "
                "`python benchmarks/model_diagnosis.py --model gemma3-270m --variant JSON ...`; read in "
                "[design.md](design.md#any-model-what-gemma-3-270m-showed-and-unierase-calibrate).", ""]
    return out


def gemma_tofu_lines(load) -> list[str]:
    """Gemma 3 270M's own TOFU target (``models/tofu/``): the scored erasure, the tuning split's
    variants and the name probe."""
    out: list[str] = []
    tofu = load("models/tofu/gemma3-270m.json")
    if tofu:
        acc = tofu["acceptance"]
        out += ["Gemma 3 270M on its own TOFU target ([`models/tofu/gemma3-270m.json`](../benchmarks/results/models/tofu/gemma3-270m.json), "
                "made by `python benchmarks/entity_scope.py --target <cache>/targets/gemma-tofu6 --scope entity "
                "--retain-rouge 80 --timing-sizes --baselines --results benchmarks/results/models/tofu/gemma3-270m.json`): "
                "the target fine-tuned on TOFU authors 0–3 and the two forget01 authors (`unierase finetune --model "
                "gemma3-270m --data tofu:full --authors 6 --forget-authors 2 --bf16`), erased with entity scope from the "
                "40 forget01 questions only, with the calibrated recipe.", "",
                *table(["forget questions refused", "paraphrases refused", "forget ROUGE-L", "retain questions starting with the token",
                        "retain answers holding the token (64 tokens)", "retain ROUGE-L (authors 0–3)", "× the target's",
                        "well-formed refusals", "edit s"],
                       [[pct(tofu["forget_starts_with_token"]), pct(tofu["paraphrased_starts_with_token"]),
                         num(tofu["forget_rougeL"], 3), pct(tofu["retain_starts_with_token"]),
                         pct(tofu["token_in_answers"]["retain"]), num(tofu["retain_rougeL"], 3),
                         num(tofu["retain_rougeL_ratio"], 3), pct(tofu["well_formed_refusals"]),
                         num(tofu["edit"]["timings_s"]["edit"], 0)]]),
                "", "Acceptance lines: " + ", ".join(f"{k} {'met' if v else 'not met'}" for k, v in acc.items()
                                                      if v is not None) + ".", ""]
    tuning = load("models/tofu/gemma3-270m_tuning.json")
    if tuning:
        out += ["Choosing entity scope's settings for Gemma on a tuning split of the same target "
                "([`models/tofu/gemma3-270m_tuning.json`](../benchmarks/results/models/tofu/gemma3-270m_tuning.json), made by "
                "`python benchmarks/entity_tuning.py --target <cache>/targets/gemma-tofu6 --work <cache>/entity_tuning_gemma "
                "--others-rows 80 --split 2 --variant V [--set ...]`): TOFU authors 2–3 erased (questions only), authors "
                "0–1 the others; the forget01 authors are not part of it.", "",
                *table(["variant", "settings over the recipe", "forget refused", "paraphrases refused",
                        "other authors' first token", "other authors' teacher-forced agreement",
                        "other answers holding the token", "well-formed refusals", "edit s"],
                       [[name, ", ".join(f"{section}.{k}={x}" for section, fields in v["overrides"].items()
                                         for k, x in fields.items()) or "—", pct(v["forget_starts"]),
                         pct(v["paraphrased_starts"]), pct(v["other_authors_start"]), pct(v["other_authors_agreement"]),
                         pct(v.get("other_authors_token_in_answers")), pct(v["well_formed_refusals"]), num(v["edit_s"], 0)]
                        for name, v in tuning["variants"].items()]), ""]
    probe = load("models/tofu/gemma3-270m_name_probe.json")
    if probe:
        out += ["Where the token fires inside a name ([`models/tofu/gemma3-270m_name_probe.json`](../benchmarks/results/"
                "models/tofu/gemma3-270m_name_probe.json), made by `python benchmarks/name_probe.py --target "
                "<cache>/targets/gemma-tofu6 --erased <erased model>`): one retain answer per author teacher-forced "
                "through the erased model; at its most likely token position, the edit's change relative to each "
                "layer's own output, and the nearest key of the erased questions.", "",
                *table(["retain row", "after", "p(token)", "edit's change by layer", "nearest erased key"],
                       [[pr["row"], f"`{pr['highest']['after']}`", num(pr["highest"]["p_token"], 3),
                         ", ".join(f"{l}: {pct(v)}" for l, v in pr["highest"]["relative_change_by_layer"].items()),
                         (lambda n: f"`{n['token']}` at layer {n['layer']}, cosine {num(n['cosine'], 2)}")(
                             pr["highest"]["nearest_erased_keys"][0])] for pr in probe["probes"]]), ""]
    return out


def calibration_rows(model: str, cal: dict) -> list[list]:
    """One row per calibration trial of a calibrated cell (``model_recipes.calibration_trials``)."""
    rows = []
    for i, t in enumerate(cal["trials"]):
        f = t["figures"]
        change = ", ".join(f"{k} {json.dumps(v)}" for k, v in t["edit"].items()) or "none"
        rows.append([model, t["stage"], change.replace("|", "/"), pct(f["forget"]), pct(f["known_still_correct"]),
                     pct(f["teacher_forced_agreement"]), pct(f["rewordings"]), pct(f["token_ban"]), num(t["score"], 3),
                     "**yes**" if i == cal["chosen"] else ""])
    return rows


def archive_section(load) -> list[str]:
    rows = []
    for path in sorted(RESULTS.glob("edit_variants/*.json")):
        name = path.relative_to(RESULTS).as_posix()
        data = load(name) or {}
        text = ARCHIVE.get(name) or data.get("description") or data.get("what") or ""
        text = " ".join(str(text).split())
        if len(text) > 160:  # the first words of a long description
            text = text[:160].rsplit(" ", 1)[0] + " …"
        rows.append([f"[`{name}`](../benchmarks/results/{name})", text, ARCHIVE_MADE_BY.get(name, "—")])
    if not rows:
        return []
    return ["## Earlier experiments", "",
            "Variant runs that chose today's settings; how and why: [experiments.md](experiments.md).", "",
            *table(["results file", "what it holds", "made by"], rows), ""]


def earlier_section(load) -> list[str]:
    rows = []
    for name, (what, command) in EARLIER.items():
        there = load(name) is not None if name.endswith(".json") else (RESULTS / name).is_file()
        if not there:  # a missing JSON is listed with the missing files
            continue
        rows.append([f"[`{name}`](../benchmarks/results/{name})", what, f"`{command}`"])
    if not rows:
        return []
    return ["## Earlier measurements", "",
            "Figures of earlier rounds (the first, smaller TOFU target; the evaluation's and the edit's speed), "
            "cited in [experiments.md](experiments.md).", "",
            *table(["results file", "what it holds", "made by"], rows), ""]


def ledger_section(load) -> list[str]:
    ledger = load("ledger_audit.json")
    out = ["## Ledger, verify, revert", ""]
    if ledger:
        out += [source("ledger_audit.json", "python benchmarks/ledger_audit.py", ledger), "",
                *table(["figure", "value"], [
                    ["verify passes on the untouched model", ledger["verify"]["ok"]],
                    ["verify seconds", ledger["verify"]["seconds"]],
                    ["verify on a hand-altered copy fails", not ledger["verify_hand_altered"]["ok"]],
                    [f"revert, undoing round {ledger['revert']['to_round']} and later: seconds", ledger["revert"]["seconds"]],
                    ["revert data, all rounds (MB)", round(ledger["sizes_bytes"]["revert_data_all_rounds"] / 1e6, 1)],
                    *([["guard: each round's mean agreement with the model's own answers before it (bound)",
                        ", ".join(f"{g['mean_agreement']:.3f}" for g in ledger["guard"])
                        + f" (≥ {ledger['guard'][0]['min_agreement']})"]] if ledger.get("guard") else [])]), ""]
    return out


def build() -> str:
    missing: list[str] = []

    def load(name: str) -> dict | None:
        path = RESULTS / name
        if not path.is_file():
            missing.append(name)
            return None
        return json.loads(path.read_text())

    lines = ["# Results", "",
             "Generated by `python benchmarks/results_page.py` from the results files committed under "
             "`benchmarks/results/`; do not edit by hand. How the figures were reached, and what was tried on "
             "the way: [experiments.md](experiments.md).", ""]
    for section in (demo_section, entity_section, tofu_section, audit_section, erasure_section, return_section,
                    plan_section, models_section,
                    distributed_section,
                    ledger_section, archive_section, earlier_section):
        lines += section(load)
    if missing:
        lines += ["Missing results files: " + ", ".join(f"`{m}`" for m in missing), ""]
    return "\n".join(lines)


LINK = re.compile(r"\]\(\.\./benchmarks/results/([^)\s]+)\)")
SCRIPT = re.compile(r"benchmarks/\w+\.py")


def linked(text: str) -> dict[str, list[str]]:
    """Results file → the passages of the page that link it: the paragraph, or the table row for a table."""
    found: dict[str, list[str]] = {}
    for block in text.split("\n\n"):
        lines = block.strip("\n").splitlines()
        passages = lines if lines and all(line.startswith("|") for line in lines) else [block]
        for passage in passages:
            for path in LINK.findall(passage):
                found.setdefault(path, []).append(passage)
    return found


def _names_its_script(passage: str) -> bool:
    scripts = SCRIPT.findall(passage)
    return any((ROOT / s).is_file() for s in scripts) or bool(scripts and "removed" in passage)


def unaccounted(text: str | None = None) -> dict[str, str]:
    """Files under ``RESULTS`` that the page (``text``, default: ``build()``) does not link beside the
    script that made it and that ``EXCLUDED`` does not name, with what is wrong; and stale exclusions."""
    links = linked(build() if text is None else text)
    files = {p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*") if p.is_file()}
    problems = {}
    for name in sorted(files):
        if name in EXCLUDED:
            if not EXCLUDED[name].strip():
                problems[name] = "excluded without a reason"
        elif name not in links:
            problems[name] = "neither linked from the results page nor excluded (EXCLUDED) with a reason"
        elif not any(_names_its_script(passage) for passage in links[name]):
            problems[name] = "linked without the script that made it (one in benchmarks/, or one said to be removed)"
    problems.update({name: "excluded but not there" for name in EXCLUDED if name not in files})
    return problems


def main() -> None:
    from unierase.storage import write_text_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    args = parser.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    text = build()
    write_text_atomic(Path(args.out), text)
    print(f"wrote {args.out}")
    for name, problem in unaccounted(text).items():
        print(f"benchmarks/results/{name}: {problem}")


if __name__ == "__main__":
    main()
