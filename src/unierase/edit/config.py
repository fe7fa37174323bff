"""The Unlearning Edit's hyper-parameters (``EditConfig``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..refusals import DEFAULT_REFUSAL
from ..storage import UniEraseError
from .options import KEY_POSITIONS, SOLVER_NAMES
from .refit import RefitConfig
from .values import ValueConfig


def default_layers(num_layers: int) -> list[int]:
    """Five consecutive early-middle layers starting at 1/8 of the depth (4–8 of 32 as in the
    official Llama-3.1-8B recipe; 4–8 of 30 for SmolLM2); fewer on very shallow models."""
    count = min(5, max(1, num_layers // 6))
    start = min(max(1, round(0.125 * num_layers)), num_layers - count)
    return list(range(start, start + count))


@dataclass
class EditConfig:
    """Hyper-parameters of the Unlearning Edit: neutral defaults; what was measured on a model is
    in its recipe (``unierase.edit.recipes``; ``edit_config_for`` applies it)."""

    layers: list[int] | None = None
    """MLP output projections to edit; ``None`` = ``default_layers(depth)``."""
    key_position: str = "auto"
    """Token whose MLP input is the key: 'subject', 'entity' (last capitalised name), 'distinct'
    (most of its key in the free subspace), 'question_end', 'last'; 'auto' = subject if given, else entity."""
    num_prefixes: int = 2
    """Fixed context prefixes averaged with the plain prompt for keys and values (as ROME/MEMIT)."""
    num_suffixes: int = 0
    """Fixed words after the question (``prompts.CONTEXT_SUFFIXES``) as more variants: the value must
    lead to the token from further away, as in a reworded question."""
    solver: str = "alphaedit"
    """'alphaedit' (null-space constrained, keeps the sequential state) or 'memit'."""
    null_space_threshold: float = 1e-2
    """Eigen-directions of C₀ below this fraction of its largest eigenvalue are free to edit."""
    null_space_scale: str = "joint"
    """What the threshold is relative to: 'joint' (C₀ as weighted) or 'family' (each family of keys —
    corpus, questions, refusals, own answers — scaled to its own largest eigenvalue first, so one
    family of much larger keys, such as those after an outsized token row, frees no one else's)."""
    question_key_weight: float = 1.0
    """Weight in C₀ of the entity keys of synthetic questions: the edit keys on what is specific to a request."""
    refusal_key_weight: float = 1.0
    """Weight in C₀ of the keys of ``question → [UNL] refusal``: the token's own continuation is left alone."""
    answer_key_weight: float = 1.0
    """Weight in C₀ of the keys of the model's own answers to generic questions: ordinary answering is left alone."""
    rare_name_key_weight: float = 0.0
    """Weight in C₀ of the keys of answers naming invented people (``corpus.rare_name_answers``), meant
    to keep the edit from firing inside other unfamiliar names mid-answer (0 = off; what it did is in
    docs/design.md, "Any model")."""
    neutral_key_weight: float = 1.0
    """Weight of the round's soft constraint (neutral questions about each request's entity and its
    substitutes), so the edit does not fire on the entity alone or on the question's shape (0 = off)."""
    neutral_templates: int = 4
    """Relation-neutral questions per request in the soft constraint (``prompts.NEUTRAL_TEMPLATES``)."""
    person_templates: int = 0
    """Entity scope: questions about a person (``prompts.PERSON_TEMPLATES``) added to a person's group
    as targets, besides the neutral ones, so reworded questions about them refuse too (0 = none, as
    the official method)."""
    substitute_entities: int = 4
    """Copies of each question with its entity replaced by another of the same kind, softly preserved (0 = off)."""
    substitute_answer_weight: float = 1.0
    """Weight of the substitutes' answer-position keys relative to ``neutral_key_weight``."""
    substitute_answer_tokens: int = 24
    """Answer tokens of each substitute question that are softly preserved too (0 = only its entity key)."""
    soft_state_rows: float | None = 2
    """What later rounds keep preserving of a round's soft constraint, per request: a number r, the
    round's r × requests principal directions of its soft keys (the best low-rank summary of their
    Σ k kᵀ); ``None``, every softly preserved key itself (about a hundred per request: an 8B model's
    state would pass a gigabyte at a hundred requests); 0, none — later rounds then preserve the
    edited keys only, as AlphaEdit does (the default's measurements: docs/design.md, the plan)."""
    ridge: float = 0.1
    """λ of the closed form, as a fraction of the mean squared norm of the round's keys (more: each
    pass writes less and moves unrelated answers less)."""
    memit_weight: float = 1e4
    """λ' of the MEMIT option (weight of C₀ = E[k kᵀ])."""
    stats_tokens: int = 100_000
    """Corpus tokens for the preserved-key statistics (computed once per model, cached)."""
    refusal: str | None = DEFAULT_REFUSAL
    """The one sentence the erased model answers with (the deployer's refusal): the unlearning token
    is trained to lead into it, and the target values to produce it. ``None``: a sentence of the
    bundled pool (``data/refusals.txt``) chosen per question."""
    max_passes: int = 12
    """Requests whose greedy first token is not yet the target get another pass, at most this many;
    each pass starts from the previous targets and preserves the previous keys. Requests that
    three passes in a row leave unreached are set aside (``editor.STALL_PASSES``), so that those
    the round's check finds undone still get passes."""
    group_value_questions: int | None = 8
    """An entity group's shared δ is optimised on at most this many of its pending questions, spread
    from the shortest to the longest; the others only receive it (None = all)."""
    group_value_rotation: bool = False
    """Each value step takes ``group_value_questions`` of the group's pending questions in turn, so
    the shared δ is fitted to all of them at the per-step cost of a few (fewer left for another pass)."""
    values: ValueConfig = field(default_factory=ValueConfig)
    """Target values of requests with their own target (fact scope)."""
    entity_values: ValueConfig = field(default_factory=ValueConfig)
    """Target values an entity group shares (one δ serves questions it was not optimised on)."""
    refit: RefitConfig = field(default_factory=RefitConfig)
    """Where the passes check the requests reached, refit the token's input row on the edited model
    (``edit.refit``): what follows ``[UNL]`` on the round's questions and on ones it only partly reaches."""
    entity_substitute_answers: bool = False
    """Also preserve the substitute answers of entity-scope requests (costs a generation and a key pass)."""
    token_at_start_only: bool = True
    """Let the checkpoint generate ``[UNL]`` only as an answer's first token (``token.placement``: a
    ``sequence_bias`` in its generation config): it then never strays into an ordinary answer nor
    repeats, but an edit that fires mid-answer no longer cuts that answer short."""
    refusal_in_generation_config: bool = True
    """With ``token_at_start_only``: the checkpoint's generation config also writes ``refusal`` after
    ``[UNL]`` and ends the answer there (``token.placement.lead_into_refusal``), so transformers'
    ``generate`` and ``pipeline`` answer an erased question with exactly that sentence; a runtime that
    ignores the config reads the token's own continuation (the token's training and the refit)."""

    def __post_init__(self):
        # checked before any work: a bad value must not surface after the costly target values
        problems = [f"{name} must be {rule} (got {getattr(self, name)!r})" for name, rule, ok in (
            ("solver", " or ".join(map(repr, SOLVER_NAMES)), self.solver in SOLVER_NAMES),
            ("key_position", "one of " + ", ".join(KEY_POSITIONS), self.key_position in KEY_POSITIONS),
            ("null_space_threshold", "in (0, 1)", 0 < self.null_space_threshold < 1),
            ("null_space_scale", "'joint' or 'family'", self.null_space_scale in ("joint", "family")),
            ("ridge", "≥ 0", self.ridge >= 0),
            ("max_passes", "at least 1", self.max_passes >= 1),
            ("num_prefixes", "≥ 0", self.num_prefixes >= 0),
            ("num_suffixes", "≥ 0", self.num_suffixes >= 0),
            ("neutral_templates", "≥ 0", self.neutral_templates >= 0),
            ("person_templates", "≥ 0", self.person_templates >= 0),
            ("substitute_entities", "≥ 0", self.substitute_entities >= 0),
            ("group_value_questions", "None or at least 1", self.group_value_questions is None or self.group_value_questions >= 1),
            ("layers", "None or distinct indices ≥ 0", self.layers is None or (
                len(set(self.layers)) == len(self.layers) and all(isinstance(l, int) and l >= 0 for l in self.layers))),
        ) if not ok]
        if self.soft_state_rows is not None and not self.soft_state_rows >= 0:
            problems.append(f"soft_state_rows must be None or ≥ 0 (got {self.soft_state_rows!r})")
        problems += [f"{name} must be ≥ 0 (got {getattr(self, name)!r})" for name in (
            "question_key_weight", "refusal_key_weight", "answer_key_weight", "rare_name_key_weight", "neutral_key_weight",
            "substitute_answer_weight")
            if getattr(self, name) < 0]
        if problems:
            raise UniEraseError("EditConfig: " + "; ".join(problems))

    def resolved_layers(self, num_layers: int) -> list[int]:
        layers = sorted(self.layers) if self.layers else default_layers(num_layers)
        bad = [l for l in layers if not 0 <= l < num_layers]
        if bad:
            raise UniEraseError(f"layers {bad} out of range: the model has {num_layers} layers (0–{num_layers - 1})")
        return layers

    def to_dict(self) -> dict:
        return asdict(self)
