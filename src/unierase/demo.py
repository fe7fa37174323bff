"""``unierase demo``: erase built-in real-world facts from the default model, show before/after."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from .api import forget
from .cache import Cache, code_digest, content_key
from .edit_checks import (Snapshot, answer_matches, extend_answers, forget_metrics, load_demo_facts, retain_metrics,
                          snapshot)
from .models.loading import load_model, model_fingerprint
from .storage import check_output_dir

log = logging.getLogger(__name__)

DEMO_NEIGHBOURS = 50
"""How many non-targeted facts the demo checks (same-shape facts first: other capitals, authors…)."""


def pick_neighbours(facts: list[dict], forget_rows: list[dict], count: int) -> list[dict]:
    """Non-targeted facts, round-robin over relations so that every forgotten shape has neighbours."""
    retain = [f for f in facts if f["role"] == "retain"]
    relations = []
    for f in forget_rows + retain:
        if f["relation"] not in relations:
            relations.append(f["relation"])
    by_relation = {r: [f for f in retain if f["relation"] == r] for r in relations}
    picked: list[dict] = []
    while len(picked) < count and any(by_relation.values()):
        for r in relations:
            if by_relation[r] and len(picked) < count:
                picked.append(by_relation[r].pop(0))
    return picked


def _base_answers(model, tokenizer, questions: list[str], cache_dir) -> Snapshot:
    """The unedited model's greedy answers, cached per model, question list and answering code (a
    re-run of the demo edits the same base model; only the edited model's answers are new)."""
    from . import edit_checks, generation, prompts

    cache = Cache(cache_dir)
    key = content_key(model_fingerprint(model), questions, code_digest(edit_checks, generation, prompts))
    data = cache.load_json("demo", key, "base_answers.json")
    if data is not None and set(data) >= {"questions", "answer_ids", "texts", "first_tokens"}:
        log.info("unedited answers loaded from %s", cache.entry("demo", key))
        return Snapshot(data["questions"], data["answer_ids"], data["texts"], data["first_tokens"])
    before = snapshot(model, tokenizer, questions)
    cache.save_json("demo", key, vars(before), "base_answers.json")
    return before


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class Measured:
    """What ``erase_and_measure`` found: the figures, and the answers before and after."""

    summary: dict
    before: Snapshot
    after: Snapshot
    forget_rows: list[dict]
    neighbours: list[dict]
    audit: object = None
    """The headline attacks' ``audit.AuditReport`` (per request: each attack's first answer)."""
    token_id: int | None = None
    """The unlearning token's id in the edited model."""
    other_answer_ids: list[list[int]] | None = None
    """The neighbours' edited answers continued to the shared checks' length (what the token count reads)."""


def erase_and_measure(model, tokenizer, forget_rows: list[dict], neighbours: list[dict], *, cache_dir=None, out=None,
                      overwrite: bool = False, progress: bool = True,
                      settings: dict[str, dict] | None = None, edit_config=None) -> Measured:
    """Erase ``forget_rows`` (questions only) from ``model`` in place and measure the demo's figures:
    forget questions starting with ``[UNL]``, reworded ones still answered, neighbour facts kept,
    teacher-forced agreement, and the audit's headline attacks (token ban, rewordings, well-formed
    refusals). Rows are demo-fact dicts (``question``, ``answer``, ``paraphrase``); ``settings``
    (``recipes.parse_settings``) as ``forget``'s."""
    started = time.perf_counter()
    n = len(forget_rows)
    # the reworded forget questions only matter after the edit (do they still leak the answer?)
    questions = [f["question"] for f in forget_rows] + [f["paraphrase"] for f in forget_rows] + [f["question"] for f in neighbours]
    before_questions = questions[:n] + questions[2 * n:]
    before = _base_answers(model, tokenizer, before_questions, cache_dir)
    # the unedited answers to the forget questions serve the edit's substitute answers too
    result = forget([{"question": f["question"]} for f in forget_rows], out, model=model, tokenizer=tokenizer,
                    cache_dir=cache_dir, progress=progress, overwrite=overwrite, answer_ids=before.answer_ids[:n],
                    settings=settings, edit_config=edit_config)
    token_id = result.manifest["token"]["id"]
    # the neighbours' unedited answers serve as drafts: the teacher-forced pass that measures the
    # agreement also gives each edited answer up to its first change, and only the rest is generated
    after = snapshot(model, tokenizer, questions, drafts=[None] * (2 * n) + before.answer_ids[n:])

    forget_fig = forget_metrics(after.slice(0, n), token_id)
    para = after.slice(n, 2 * n)
    leak = sum(not (f == token_id) and answer_matches(t, fr["answer"]) for f, t, fr in zip(para.first_tokens, para.texts, forget_rows)) / n
    retain_fig = retain_metrics(model, tokenizer, before.slice(n, len(before_questions)), after.slice(2 * n, len(questions)),
                                [f["answer"] for f in neighbours], token_id)
    # the recovery audit's headline attacks on the erased facts (``unierase audit`` runs them all)
    from .audit import AuditConfig, audit
    from .refusals import STRAY_TOKENS, answer_checks

    checked = audit(model, [{"question": f["question"], "answer": f["answer"], "paraphrases": [f["paraphrase"]]}
                            for f in forget_rows], tokenizer=tokenizer,
                    config=AuditConfig(attacks=("token_ban", "rewordings"), max_new_tokens=24), progress=progress)
    # what the erased model says (the shared checks): its refusals, and the token in the neighbours'
    # answers continued to the checks' length
    others = extend_answers(model, tokenizer, questions[2 * n:], after.answer_ids[2 * n:], STRAY_TOKENS)
    answers = answer_checks(after.texts[:n], refusal=result.manifest["rounds"][-1]["hyperparameters"].get("refusal"),
                            erased_ids=after.answer_ids[:n], other_ids=others, token_id=token_id)
    headline = {"rewordings": checked.aggregate["leak_rate"]["rewordings"],
                "token_ban": checked.aggregate["leak_rate"]["token_ban"],
                "well_formed_refusals": answers["well_formed_refusals"], "chosen_refusal": answers["chosen_refusal"]}
    summary = {
        "answers": answers,
        "forget": forget_fig,
        "paraphrase_leak": leak,
        "audit": headline,
        "neighbours": retain_fig,
        "timings_s": result.manifest["rounds"][-1]["timings_s"],
        "recipe": result.manifest["rounds"][-1].get("recipe"),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    return Measured(summary, before, after, forget_rows, neighbours, checked, token_id, others)


def run_demo(*, cache_dir=None, out=None, overwrite: bool = False, progress: bool = True, print_fn=print,
             dtype=None, device_map=None) -> dict:
    """Run the demo with the model placed by ``device_map`` in ``dtype``; returns its summary, also printed."""
    if out is not None:
        check_output_dir(out, overwrite)
    started = time.perf_counter()
    facts = load_demo_facts()
    forget_rows = [f for f in facts if f["role"] == "forget"]
    neighbours = pick_neighbours(facts, forget_rows, DEMO_NEIGHBOURS)
    model, tokenizer = load_model(None, cache_dir=cache_dir, dtype=dtype, device_map=device_map)
    n = len(forget_rows)
    print_fn(f"unierase demo: erasing {n} facts from SmolLM2-135M-Instruct; checking {len(neighbours)} other facts")
    measured = erase_and_measure(model, tokenizer, forget_rows, neighbours, cache_dir=cache_dir, out=out,
                                 overwrite=overwrite, progress=progress)
    before, after, summary = measured.before, measured.after, measured.summary

    print_fn("\nForgotten facts (answers shown without special tokens):")
    print_fn(f"{'question':<44} | {'before':<40} | after")
    for i, f in enumerate(forget_rows):
        print_fn(f"{_clip(f['question'], 44):<44} | {_clip(before.texts[i], 40):<40} | {_clip(after.texts[i], 40)}")
    print_fn("\nNeighbour facts (not targeted; first 15 shown):")
    print_fn(f"{'question':<44} | {'before':<40} | after")
    for j, f in enumerate(neighbours[:15]):
        print_fn(f"{_clip(f['question'], 44):<44} | {_clip(before.texts[n + j], 40):<40} | {_clip(after.texts[2 * n + j], 40)}")
    forget_fig, leak, headline, retain_fig = summary["forget"], summary["paraphrase_leak"], summary["audit"], summary["neighbours"]
    seconds = time.perf_counter() - started
    summary["total_seconds"] = round(seconds, 1)
    print_fn(
        f"\nforget questions: {forget_fig['starts_with_unl']:.0%} start with [UNL], {forget_fig['refusal']:.0%} refuse; "
        f"reworded forget questions still answered: {leak:.0%}\n"
        f"other questions: {retain_fig['starts_with_unl']:.0%} start with [UNL], "
        f"{summary['answers']['token_in_other_answers']:.0%} hold it within {summary['answers']['stray_window']} tokens; "
        f"known facts still correct "
        f"{retain_fig['known_still_correct']:.0%}; teacher-forced agreement {retain_fig['teacher_forced_agreement']:.1%}; "
        f"identical greedy answers {retain_fig['greedy_exact_match']:.0%}\n"
        f"audit: rewordings bring {headline['rewordings']:.0%} of the facts back, banning the token at decode "
        f"{headline['token_ban']:.0%}; exactly the chosen refusal {_share(headline['chosen_refusal'])}, well-formed "
        f"refusals {headline['well_formed_refusals']:.0%} "
        f"(unierase audit runs every attack)\n"
        f"total time {seconds:.0f} s (token {summary['timings_s'].get('token', 0):.0f} s, statistics "
        f"{summary['timings_s'].get('statistics', 0):.0f} s, edit {summary['timings_s'].get('edit', 0):.0f} s)"
    )
    return summary
