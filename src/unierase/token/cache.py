"""Train the unlearning token once per base model and reuse it from the cache afterwards."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..cache import Cache, code_digest, content_key
from .questions import training_questions
from .training import UnlearningTokenConfig, token_rows, add_unlearning_token, train_unlearning_token

log = logging.getLogger(__name__)

TOKEN_KIND = "tokens"


@dataclass
class TokenInfo:
    token: str
    token_id: int
    source: str  # "checkpoint" (already in the model), "cache" or "trained"
    seconds: float = 0.0
    cache_key: str | None = None


def token_cache_key(fingerprint: str, config: UnlearningTokenConfig, augment_layers: list[int] | None) -> str:
    """The token's cache key: the base model, the settings, and the code and texts it is trained from."""
    from .. import prompts, refusals
    from . import questions, training

    return content_key(fingerprint, config, augment_layers, refusals.load_refusals(),
                       code_digest(training, questions, refusals, prompts))


def ensure_unlearning_token(model, tokenizer, *, fingerprint: str, cache_dir: str | Path, config: UnlearningTokenConfig,
                            augment_layers: list[int] | None = None, progress: bool = True, own_answers=None) -> TokenInfo:
    """Make sure ``model``/``tokenizer`` carry a trained unlearning token (from the checkpoint, the cache, or training)."""
    if config.token in tokenizer.get_vocab():
        return TokenInfo(config.token, tokenizer.convert_tokens_to_ids(config.token), "checkpoint")
    key = token_cache_key(fingerprint, config, augment_layers)
    cache = Cache(cache_dir)
    folder = cache.entry(TOKEN_KIND, key)
    data = cache.load_tensors(TOKEN_KIND, key, "token.safetensors")
    if data is not None:
        token_id = add_unlearning_token(model, tokenizer, config.token, config.own_output_row)
        with torch.no_grad():
            for i, w in enumerate(token_rows(model)):
                w[token_id] = data[f"row{i}"].to(device=w.device, dtype=w.dtype)
        log.info("unlearning token loaded from cache %s", folder)
        return TokenInfo(config.token, token_id, "cache", 0.0, key)
    log.info("training the unlearning token (once per base model; cached in %s)", folder)
    report = train_unlearning_token(model, tokenizer, training_questions(config.num_questions), config, augment_layers, progress,
                                    own_answers)
    token_id = tokenizer.convert_tokens_to_ids(config.token)
    rows = {f"row{i}": w[token_id].detach().float().cpu() for i, w in enumerate(token_rows(model))}
    cache.save_tensors(TOKEN_KIND, key, rows, "token.safetensors")
    cache.save_json(TOKEN_KIND, key, {"config": config.to_dict(), "augment_layers": augment_layers, "steps": report.steps,
                                      "seconds": round(report.seconds, 2),
                                      "final_loss": report.losses[-1] if report.losses else None,
                                      "output_row": report.output_row}, "training.json")
    return TokenInfo(config.token, token_id, "trained", report.seconds, key)
