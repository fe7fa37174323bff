"""The refusal sentences the unlearning token leads into, and a refusal detector.

The sentences are the project's own. A question's refusal is chosen by a *stable* hash of the
question (not Python's salted ``hash``) so that training data is reproducible.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources

from .storage import UniEraseError


DEFAULT_REFUSAL = "I'm sorry, I can't help with that."
"""What an erased model answers unless the deployer chooses another sentence (``--refusal``)."""


def load_refusals() -> list[str]:
    text = resources.files("unierase").joinpath("data/refusals.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def refusal_pool(chosen: str | None = None) -> list[str]:
    """The sentences the unlearning token leads into: the deployer's one ``chosen`` refusal, else the
    bundled pool (``data/refusals.txt``), from which ``refusal_for`` picks one per question."""
    return [chosen] if chosen else load_refusals()


def check_refusal(text: str | None, answers: list[str] = ()) -> None:
    """A chosen refusal must be one non-empty line and must not give away an answer being erased."""
    if text is None:
        return
    if not text.strip() or "\n" in text or len(text) > 300:
        raise UniEraseError("the refusal must be one non-empty line of at most 300 characters")
    leaked = [a for a in answers if a and a.strip().lower() in text.lower()]
    if leaked:
        raise UniEraseError(f"the refusal {text!r} contains the answer {leaked[0]!r} of a request being erased")


def refusal_for(question: str, refusals: list[str]) -> str:
    """A refusal chosen by a stable hash of the question (the same in every process), for the
    token's training, the edit's target continuation and the baselines' IDK targets."""
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    return refusals[int.from_bytes(digest[:4], "big") % len(refusals)]


_REFUSAL_PATTERN = re.compile(
    r"(\bi['’]?m sorry\b|\bi am sorry\b|^sorry\b|\bdo(?:n['’]?t| not) know\b|\bcan(?:not|['’]?t) (?:answer|help|provide|say)\b|"
    r"\bunable to\b|\bnot able to\b|\b(?:do(?:n['’]?t| not)|no) have (?:that|any|the) (?:information|ability|knowledge)\b|"
    r"\bno information\b|\bbeyond (?:what|my) (?:i know|knowledge)\b|\bi['’]?m not sure\b|\bi['’]?m afraid\b)",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """True when ``text`` opens with (or mainly is) a refusal such as "I don't know that."."""
    head = text.strip()[:120]
    return bool(_REFUSAL_PATTERN.search(head))


_DANGLING = {"but", "and", "or", "to", "the", "a", "an", "of", "with", "for", "because"}
"""Words no complete sentence ends on (conjunctions, articles, prepositions); "that", "is", "so"
can ("I don't know that.")."""


def is_well_formed_refusal(text: str) -> bool:
    """A refusal (``is_refusal``) made of complete sentences: it ends with punctuation, repeats no
    sentence and no word pair ("I'm sorry, but I'm sorry."), and has no stray fragment (a sentence
    of fewer than 3 words, or one that ends on "but", "and", "the"…: "I'm sorry, but.")."""
    text = text.strip()
    if not text or not is_refusal(text) or text[-1] not in ".!?":
        return False
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    if len(set(s.lower() for s in sentences)) < len(sentences) or any(len(s.split()) < 3 for s in sentences):
        return False
    if any(re.sub(r"[^\w']", "", s.split()[-1].lower()) in _DANGLING for s in sentences):
        return False
    words = re.findall(r"[\w']+", text.lower())
    grams = [tuple(words[i:i + 2]) for i in range(len(words) - 1)]
    return len(set(grams)) == len(grams)


_LOOP = re.compile(r"(\S{2,}?)\1{3,}|([^\w\s])\2{5,}")
"""A piece of two or more characters four times in a row ("I'mI'mI'mI'm"), or one punctuation mark six times."""


def is_broken_text(text: str) -> bool:
    """Text no answer reads like: empty, a loop ("I'mI'mI'm…", "……"), mostly neither letters nor
    digits ("?!?))"), or no word of two characters or more. What a destroyed model prints; a short
    real answer ("Paris.", "1990") is not broken."""
    stripped = text.strip()
    visible = re.sub(r"\s+", "", stripped)
    if not visible or _LOOP.search(stripped):
        return True
    return sum(ch.isalnum() for ch in visible) < 0.5 * len(visible) or not re.search(r"\w{2,}", stripped)


# ----------------------------------------------------------------------------- what an erased model says
# One definition of the checks, used by ``unierase eval``, ``unierase audit``, the demo's summary and
# the benchmarks, so that a figure means the same wherever it is printed.

STRAY_TOKENS = 64
"""How far into a non-erased answer the unlearning token is looked for."""


def is_chosen_refusal(text: str, refusal: str) -> bool:
    """The answer (special tokens stripped) is exactly ``refusal``, up to surrounding and repeated whitespace."""
    return " ".join(text.split()) == " ".join(refusal.split())


def holds_token(answer_ids, token_id: int | None, within: int = STRAY_TOKENS) -> bool:
    """The unlearning token occurs among the first ``within`` tokens of an answer."""
    return token_id is not None and token_id in list(answer_ids)[:within]


def repeats_token(answer_ids, token_id: int | None) -> bool:
    """The unlearning token occurs more than once in an answer (it should open it and nothing else)."""
    return token_id is not None and list(answer_ids).count(token_id) > 1


def answer_checks(erased_texts: list[str], *, refusal: str | None = None, erased_ids: list[list[int]] | None = None,
                  other_ids: list[list[int]] | None = None, token_id: int | None = None) -> dict:
    """Shares over the erased answers (``chosen_refusal`` — exactly the chosen refusal;
    ``well_formed_refusals`` — ``is_well_formed_refusal``; ``token_repeated``) and over the answers
    that were not erased (``token_in_other_answers``: the token within ``STRAY_TOKENS`` tokens).
    A share that cannot be computed from what is given is ``None``."""
    def share(flags):
        flags = list(flags)
        return round(sum(flags) / len(flags), 4) if flags else None

    have_token = token_id is not None
    return {
        "erased": len(erased_texts),
        "chosen_refusal": share(is_chosen_refusal(t, refusal) for t in erased_texts) if refusal else None,
        "well_formed_refusals": share(map(is_well_formed_refusal, erased_texts)),
        "token_repeated": share(repeats_token(i, token_id) for i in erased_ids) if erased_ids is not None and have_token else None,
        "other": len(other_ids) if other_ids is not None else 0,
        "token_in_other_answers": (share(holds_token(i, token_id) for i in other_ids)
                                   if other_ids is not None and have_token else None),
        "stray_window": STRAY_TOKENS,
    }
