"""Shared fixtures (builders live in tiny_models.py so test modules can import them by a unique name)."""

import pytest

from tiny_models import build_model, build_tokenizer


@pytest.fixture
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    return build_model("llama", len(tiny_tokenizer)), tiny_tokenizer


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("UNIERASE_CACHE", str(cache))
    return cache
