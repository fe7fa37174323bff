"""The settings ``calibrate`` tries, how a trial is scored, and which trial wins.

A trial erases the calibration facts (questions only, one batch) from a copy of the model exactly
as ``unierase demo`` does (``demo.erase_and_measure``) with one candidate recipe and records the
demo's figures on them. The search is coordinate-wise: each stage tries its candidates against
the best recipe so far and keeps a candidate only when it scores better by more than
``MARGIN`` — a change has to earn its place.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

LOCALITY_BOUNDS = {"known_still_correct": 0.9, "teacher_forced_agreement": 0.95}
"""A trial keeps the rest of the model when its neighbours meet these (the issue's bounds)."""
FORGET_BOUND = 0.9
"""A trial erases when at least this share of its facts start with the token (the issue's bound)."""
MARGIN = 0.05
"""A candidate must beat the current recipe's score by more than this (a figure on 24 facts moves
by 0.042 with one fact, on 15 by 0.067: a change must move more than about one fact)."""


@dataclass(frozen=True)
class Stage:
    """One coordinate of the search: a name, why it is tried, and its candidate changes (recipe
    ``edit`` fragments merged over the best recipe so far)."""

    name: str
    why: str
    candidates: list[dict] = field(default_factory=list)


WIDE_WINDOW = 5
"""Layers of the wider window tried where the default has fewer (the official recipes edit five)."""


def stages(traced_layers: list[int], default: list[int], num_layers: int) -> list[Stage]:
    """The search, in order. Layers first (every later stage depends on where the edit writes),
    then the size of each pass's write, then what the null space is measured against and how much
    room it leaves, then how hard the model's own answers are held."""
    layer_candidates = [{"layers": traced_layers}] if traced_layers != default else []
    wide = list(range(default[0], min(num_layers, default[0] + WIDE_WINDOW)))
    if len(wide) > len(default):
        layer_candidates.append({"layers": wide})
    return [
        Stage("layers", "the window where restoring the MLP outputs at the subject brings the answer back most "
                        "(causal tracing), or the default window widened to five layers (each layer then writes "
                        "less of the change), against the depth-based default", layer_candidates),
        Stage("step", "a smaller write per pass in more steps (δ bound 0.35 ‖h‖, 20 steps) moves unrelated answers less",
              [{"values": {"clamp_factor": 0.35, "steps": 20}}]),
        Stage("null space scale", "the threshold taken per family of preserved keys: where one family (such as the "
                                  "keys after an outsized token row) dominates C0, the joint threshold frees the "
                                  "others' directions", [{"null_space_scale": "family"}]),
        Stage("null space", "a smaller null-space threshold (3e-3 down to 1e-5 of the largest eigenvalue) protects "
                            "more key directions: where a few keys dominate C0, the default 1e-2 frees nearly all",
              [{"null_space_threshold": t} for t in (3e-3, 1e-3, 1e-4, 1e-5)]),
        Stage("locality", "the model's own answers held twice as hard (with a larger ridge, each pass writing "
                          "less, or alone), or the neutral questions about each erased subject and its substitutes "
                          "held twice as hard: the neighbours an edit loses share a subject or a question's "
                          "shape with an erased fact",
              [{"answer_key_weight": 2.0, "ridge": 0.2}, {"answer_key_weight": 2.0}, {"neutral_key_weight": 2.0}]),
    ]


def merged(base: dict, change: dict) -> dict:
    """``base`` with ``change`` applied (nested sections merged field by field)."""
    out = copy.deepcopy(base)
    for key, value in change.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def figures(summary: dict) -> dict:
    """The per-model table's figures from ``erase_and_measure``'s summary."""
    audit, neighbours = summary["audit"], summary["neighbours"]
    edit_s = summary["timings_s"].get("edit", 0.0)
    return {"forget": summary["forget"]["starts_with_unl"], "known_still_correct": neighbours["known_still_correct"],
            "teacher_forced_agreement": neighbours["teacher_forced_agreement"], "rewordings": audit["rewordings"],
            "token_ban": audit["token_ban"], "well_formed_refusals": audit["well_formed_refusals"],
            "token_in_other_answers": summary["answers"]["token_in_other_answers"],
            "seconds_per_request": round(edit_s / max(1, summary["forget"]["n"]), 2)}


def keeps_locality(fig: dict) -> bool:
    return all((fig[name] if fig[name] is not None else 1.0) >= bound for name, bound in LOCALITY_BOUNDS.items())


def score(fig: dict) -> float:
    """The sum of the figures that should be high, minus those that should be low (each in [0, 1]):
    erased, kept, agreement, well-formed refusals, and no leak under rewordings, a banned token or
    a stray token."""
    kept = fig["known_still_correct"] if fig["known_still_correct"] is not None else 1.0
    return round(fig["forget"] + kept + fig["teacher_forced_agreement"] + fig["well_formed_refusals"]
                 - fig["rewordings"] - fig["token_ban"] - fig["token_in_other_answers"], 4)


def bounds_met(fig: dict) -> tuple[bool, bool]:
    """(erases, keeps the rest of the model): the bounds ``better`` weighs first, in this order, so
    that a setting which stops erasing never wins on locality alone."""
    return fig["forget"] >= FORGET_BOUND, keeps_locality(fig)


def better(candidate: dict, current: dict) -> bool:
    """Whether a candidate trial replaces the current best: erasing comes first, then keeping the
    rest of the model, then a score higher by more than ``MARGIN``."""
    a, b = bounds_met(candidate["figures"]), bounds_met(current["figures"])
    if a != b:
        return a > b
    return candidate["score"] > current["score"] + MARGIN
