"""Fixed frames around an unchanged question: a cheap stand-in for a paraphrase that keeps the
question's entity and relation words (the audit's rewordings, RETURN's reworded questions).

A module of its own: prompt rendering (``prompts``) is part of the key of cached tokens and
answers, which a new frame must not invalidate."""

REWORDING_FRAMES = (
    "My friend and I disagree on this one. {q}",
    "I need this for a quiz. {q}",
    "{q} Please answer in one sentence.",
)
