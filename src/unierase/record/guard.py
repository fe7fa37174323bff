"""The guard against a wrecked model: before a round is saved, the model must still give its own
answers to generic questions (and to the round's neighbours).

At the start of a round the model's greedy answers to a fixed set of generic held-out questions,
plus up to ``MAX_NEIGHBOURS`` of the round's neighbour questions, are taken; before the round is
saved, the changed model is teacher-forced on those answers. When the mean share of answer tokens
it still predicts falls below ``MIN_AGREEMENT``, the round is not saved (``WreckedModelError``,
exit status 2) unless the caller forces it, which the ledger records. The bound is far below what
an edit that keeps the rest of the model does (0.96 on the demo's neighbours) and far above what a
destroyed model does (near 0: every answer is other text).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..storage import UniEraseError

log = logging.getLogger(__name__)

GENERIC_QUESTIONS = 8
"""Generic held-out questions asked in every guard (``token.questions.heldout_questions``)."""
MAX_NEIGHBOURS = 8
"""Of the round's own neighbour questions, at most this many join them."""
MIN_AGREEMENT = 0.5
"""Mean teacher-forced agreement with the answers before the round below which a round is refused."""
WARN_AGREEMENT = 0.9
"""Below this (and above ``MIN_AGREEMENT``) the round is saved with a warning: the model still
answers, but the edit moved more of its ordinary answers than a setting that suits the model does."""
ANSWER_TOKENS = 24
"""Greedy tokens per answer taken before the round."""


class WreckedModelError(UniEraseError):
    """A round that changed the model's ordinary answers beyond the guard's bound."""


@dataclass
class GuardBaseline:
    """The model's own answers before the round."""

    questions: list[str]
    answers: list[list[int]]


def guard_questions(neighbours: list[str] = ()) -> list[str]:
    """The generic held-out questions and up to ``MAX_NEIGHBOURS`` of the round's neighbours."""
    from ..token.questions import heldout_questions

    generic = heldout_questions(GENERIC_QUESTIONS)
    own = [q for q in dict.fromkeys(neighbours) if q not in generic][:MAX_NEIGHBOURS]
    return generic + own


def take_baseline(model, tokenizer, neighbours: list[str] = ()) -> GuardBaseline:
    """Greedy answers to ``guard_questions(neighbours)`` on the model as it is now."""
    from ..generation import generate_answer_ids

    questions = guard_questions(neighbours)
    return GuardBaseline(questions, generate_answer_ids(model, tokenizer, questions, max_new_tokens=ANSWER_TOKENS))


def check(model, tokenizer, baseline: GuardBaseline, *, force: bool = False) -> dict:
    """Teacher-force the changed model on the answers before the round; raise ``WreckedModelError``
    when their mean agreement is below ``MIN_AGREEMENT`` (unless ``force``). Returns the record the
    ledger keeps."""
    from ..generation import teacher_forced_agreement

    scores = teacher_forced_agreement(model, tokenizer, baseline.questions, baseline.answers)
    mean = sum(scores) / max(1, len(scores))
    report = {"questions": len(scores), "mean_agreement": round(mean, 4), "min_agreement": MIN_AGREEMENT,
              "collapsed": mean < MIN_AGREEMENT, "forced": bool(force and mean < MIN_AGREEMENT),
              "worst": [{"question": q, "agreement": round(s, 4)}
                        for s, q in sorted(zip(scores, baseline.questions))[:3]]}
    if not report["collapsed"] and mean < WARN_AGREEMENT:
        log.warning("the changed model keeps %.0f%% of its own answers to %d generic and neighbour questions (a setting "
                    "that suits a model keeps over %.0f%%): check its other answers; 'unierase calibrate' measures "
                    "settings for this model", 100 * mean, len(scores), 100 * WARN_AGREEMENT)
    if report["collapsed"] and not force:
        worst = "; ".join(f"{w['question']!r} {w['agreement']:.0%}" for w in report["worst"])
        raise WreckedModelError(
            f"the round was not saved: the changed model keeps only {mean:.0%} of its own answers to "
            f"{len(scores)} generic and neighbour questions (at least {MIN_AGREEMENT:.0%} required; worst: {worst}). "
            "The edit settings do not suit this model: try other --layers, a smaller step (--set values.clamp_factor=…) "
            "or fewer requests per round; --force saves it anyway (recorded in the ledger)")
    return report
