"""The Unlearning Edit: scope → prompts → keys → target values → preserved keys → closed-form solve,
run as passes by ``editor`` for one round by ``erase.erase``. Registers the method ``unierase``."""

from ..registry import Method, register
from . import erase
from .erase import ForgetResult
from .options import EraseOptions

register(Method("unierase", "edit", "closed-form edit: each question starts its answer with the unlearning token, "
                "which continues as a refusal", erase.erase, EraseOptions))

__all__ = ["EraseOptions", "ForgetResult"]
