"""Train the unlearning token once per base model and reuse it from the cache afterwards."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..storage import save_tensors_atomic, write_json_atomic
from .questions import training_questions
from .training import UnlearningTokenConfig, _token_rows, add_unlearning_token, train_unlearning_token

log = logging.getLogger(__name__)


@dataclass
class TokenInfo:
    token: str
    token_id: int
    source: str  # "checkpoint" (already in the model), "cache" or "trained"
    seconds: float = 0.0
    cache_key: str | None = None


TRAINING_RECIPE = 2
"""Bumped whenever the training code changes what a given config produces (invalidates the cache)."""


def token_cache_key(fingerprint: str, config: UnlearningTokenConfig, augment_layers: list[int] | None) -> str:
    payload = json.dumps({"config": config.to_dict(), "layers": augment_layers, "recipe": TRAINING_RECIPE}, sort_keys=True)
    return f"{fingerprint}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def token_folder(cache_dir: str | Path, cache_key: str) -> Path:
    """Where a trained token (and what depends on it alone, e.g. its refusal-key statistics) is cached."""
    return Path(cache_dir) / "tokens" / cache_key


def ensure_unlearning_token(model, tokenizer, *, fingerprint: str, cache_dir: str | Path, config: UnlearningTokenConfig,
                            augment_layers: list[int] | None = None, progress: bool = True, own_answers=None) -> TokenInfo:
    """Make sure ``model``/``tokenizer`` carry a trained unlearning token (from the checkpoint, the cache, or training)."""
    if config.token in tokenizer.get_vocab():
        return TokenInfo(config.token, tokenizer.convert_tokens_to_ids(config.token), "checkpoint")
    key = token_cache_key(fingerprint, config, augment_layers)
    folder = token_folder(cache_dir, key)
    path = folder / "token.safetensors"
    if path.is_file():
        token_id = add_unlearning_token(model, tokenizer, config.token)
        data = load_file(str(path))
        with torch.no_grad():
            for i, w in enumerate(_token_rows(model, config.train_output_row)):
                w[token_id] = data[f"row{i}"].to(device=w.device, dtype=w.dtype)
        log.info("unlearning token loaded from cache %s", folder)
        return TokenInfo(config.token, token_id, "cache", 0.0, key)
    log.info("training the unlearning token (once per base model; cached in %s)", folder)
    report = train_unlearning_token(model, tokenizer, training_questions(config.num_questions), config, augment_layers, progress,
                                    own_answers)
    token_id = tokenizer.convert_tokens_to_ids(config.token)
    rows = {f"row{i}": w[token_id].detach().float().cpu() for i, w in enumerate(_token_rows(model, config.train_output_row))}
    save_tensors_atomic(path, rows)
    write_json_atomic(folder / "training.json", {"config": config.to_dict(), "augment_layers": augment_layers,
                                                 "steps": report.steps, "seconds": round(report.seconds, 2),
                                                 "final_loss": report.losses[-1] if report.losses else None})
    return TokenInfo(config.token, token_id, "trained", report.seconds, key)
