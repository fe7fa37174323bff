"""Fixtures for the evaluation tests: shared data location, a tokenizer, tiny random models, tiny TOFU data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch


def find_shared_data() -> Path | None:
    """$UNIERASE_DATA, else a sibling ``shared/data`` of a folder above this repository."""
    env = os.environ.get("UNIERASE_DATA")
    if env:
        path = Path(env)
        return path if path.is_dir() else None
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = find_shared_data()
    if path is None or not (path / "tofu").is_dir():
        pytest.skip("shared TOFU data not found (set UNIERASE_DATA or place it in a sibling shared/data)")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    """The SmolLM2 tokenizer (ChatML template; converted default model from the cache)."""
    from transformers import AutoTokenizer

    from unierase.models.loading import default_model_dir
    from unierase.storage import UniEraseError

    try:
        path = default_model_dir()
    except UniEraseError as err:
        pytest.skip(f"default model unavailable: {err}")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def make_tiny_model(tokenizer, seed: int = 0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    return make_tiny_model(tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer, tiny_model):
    path = tmp_path_factory.mktemp("tiny_model")
    tiny_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _qa(prefix: str, i: int, n_pert: int, paraphrased: bool) -> dict:
    row = {"question": f"{prefix} question number {i}: who wrote book {i}?",
           "answer": f"Book {i} was written by author {i}.",
           "perturbed_answer": [f"Book {i} was written by person {k}." for k in range(n_pert)]}
    if paraphrased:
        row["paraphrased_answer"] = f"Author {i} is the writer of book {i}."
        row["paraphrased_question"] = f"Which writer is behind book {i} ({prefix})?"
    return row


def write_tiny_tofu(folder: Path, n: int = 4) -> Path:
    """A synthetic TOFU directory with the four evaluation configs of forget10 and its holdout set."""
    folder.mkdir(parents=True, exist_ok=True)
    sets = {
        "forget10_perturbed": [_qa("forget", i, 5, True) for i in range(n)],
        "retain_perturbed": [_qa("retain", i, 5, True) for i in range(n)],
        "real_authors_perturbed": [_qa("real", i, 3, False) for i in range(n)],
        "world_facts_perturbed": [_qa("world", i, 3, False) for i in range(n)],
        "holdout10": [{"question": f"Who is holdout author {i}?", "answer": f"Holdout author {i} writes poems."}
                      for i in range(n)],
    }
    for name, rows in sets.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "idontknow.txt").write_text("I don't know that.\nThat's beyond my knowledge.\n", encoding="utf-8")
    return folder


@pytest.fixture
def tiny_tofu(tmp_path) -> Path:
    return write_tiny_tofu(tmp_path / "tofu")
