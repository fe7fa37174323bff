"""Fixtures for the baseline tests: the SmolLM2 tokenizer, a tiny random Llama, tiny QA data."""

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
        return Path(env) if Path(env).is_dir() else None
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "data"
        if (candidate / "tofu").is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = find_shared_data()
    if path is None or not (path / "tofu" / "full.jsonl").is_file():
        pytest.skip("shared TOFU data not found (set UNIERASE_DATA or place it in a sibling shared/data)")
    return path


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_byte_tokenizer():
    """A byte-level tokenizer with 259 tokens and a ChatML template, built offline (fast tests)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def tokenizer():
    return make_byte_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A 2-layer random Llama over the byte tokenizer (pad = eos, as in SmolLM2)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    model = AutoModelForCausalLM.from_config(cfg)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


FORGET = [{"question": f"Who wrote the novel number {i}?", "answer": f"Novel {i} was written by Ada Quill{i}."} for i in range(4)]
RETAIN = [{"question": f"Where was painter {i} born?", "answer": f"Painter {i} was born in Town{i}."} for i in range(6)]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def qa_rows():
    """(forget rows, retain rows) as dicts."""
    return FORGET, RETAIN


@pytest.fixture
def forget_file(tmp_path):
    return write_jsonl(tmp_path / "forget.jsonl", FORGET)


@pytest.fixture
def retain_file(tmp_path):
    return write_jsonl(tmp_path / "retain.jsonl", RETAIN)
