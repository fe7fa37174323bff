"""Builders shared by the tests: a tiny offline tokenizer with a ChatML template and tiny random models of every
supported architecture (built from configs in milliseconds; no downloads)."""

from __future__ import annotations

import torch

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_TRAINING_TEXT = [
    "What is the capital of France? The capital of France is Paris.",
    "Who wrote Hamlet? William Shakespeare wrote Hamlet.",
    "Question: Answer: I'm sorry, but I don't know the answer to that.",
    "The quick brown fox jumps over the lazy dog. Tell me this. Please answer briefly.",
    "Where was Elena Marsh born? When did Tomas Varga die? What is gold used for?",
]


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_TRAINING_TEXT * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHATML
    return fast


def build_plain_tokenizer():
    """The tiny tokenizer without a chat template that adds a BOS to every text, as Gemma's base
    model does (the plain Question/Answer format)."""
    from tokenizers.processors import TemplateProcessing

    fast = build_tokenizer()
    bos = fast.bos_token_id
    fast.backend_tokenizer.post_processor = TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    fast.chat_template = None
    return fast


def _configs(vocab: int) -> dict:
    from transformers import (GPT2Config, GPTNeoXConfig, Gemma2Config, LlamaConfig, MistralConfig, PhiConfig, Qwen2Config)

    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2)
    return {
        "llama": LlamaConfig(**common, tie_word_embeddings=True),
        "qwen2": Qwen2Config(**common, tie_word_embeddings=False),
        "mistral": MistralConfig(**common),
        "gemma2": Gemma2Config(**common, head_dim=8),
        "gpt2": GPT2Config(vocab_size=vocab, n_embd=32, n_layer=4, n_head=4, n_positions=256),
        "gpt_neox": GPTNeoXConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                  num_attention_heads=4, max_position_embeddings=256),
        "phi": PhiConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, max_position_embeddings=256),
    }


ARCHITECTURES = ["llama", "qwen2", "mistral", "gemma2", "gpt2", "gpt_neox", "phi"]


def build_model(arch: str, vocab: int, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_configs(vocab)[arch])
    model.eval()
    return model


def save_tiny_model(folder, arch: str = "llama"):
    """A tiny model and its tokenizer saved as a Hugging Face directory; ``folder``."""
    tok = build_tokenizer()
    build_model(arch, len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_base_and_requests(tmp_path):
    """``tmp_path/base`` (a saved tiny model) and two one-question request files, ``r1.jsonl``
    (Who wrote Hamlet?) and ``r2.jsonl`` (What is the capital of France?); ``tmp_path``."""
    import json

    save_tiny_model(tmp_path / "base")
    (tmp_path / "r1.jsonl").write_text(json.dumps({"question": "Who wrote Hamlet?"}) + "\n")
    (tmp_path / "r2.jsonl").write_text(json.dumps({"question": "What is the capital of France?"}) + "\n")
    return tmp_path


EDIT_QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?"]


def tiny_edit_setup(arch: str = "llama", num_prefixes: int = 1, questions: list[str] | None = None):
    """(tokenizer, model, adapter, edit prompts) for value/key tests: each question keyed at its
    last character, with ``num_prefixes`` prefixed variants."""
    from unierase.edit.prompts import build_edit_prompts
    from unierase.models.adapters import find_mlp_output

    tok = build_tokenizer()
    model = build_model(arch, len(tok))
    questions = questions or EDIT_QUESTIONS
    prompts = [p for i, q in enumerate(questions) for p in build_edit_prompts(tok, q, i, len(q) - 1, num_prefixes)]
    return tok, model, find_mlp_output(model), prompts
