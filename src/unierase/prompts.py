"""Prompt rendering shared by editing, asking, evaluation and the baselines.

Every code path renders a question the same way, so the prompt that was edited is the prompt that
is evaluated. Chat templates are rendered with a pinned date string (some templates insert
today's date, which would change the prompt from day to day); models without a chat template use
a plain ``Question: … / Answer:`` format.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PINNED_DATE = "26 Jul 2024"
"""Date string passed to chat templates that insert one (recorded in manifests)."""

PLAIN_TEMPLATE = "Question: {question}\nAnswer:"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, question: str, *, chat: bool | None = None) -> str:
    """The text after which the model's next token is the first token of its answer."""
    if chat is None:
        chat = has_chat_template(tokenizer)
    if not chat:
        return PLAIN_TEMPLATE.format(question=question)
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        tokenize=False,
        add_generation_prompt=True,
        date_string=PINNED_DATE,
    )


def adds_special_tokens(tokenizer, text: str) -> bool:
    """Whether rendered ``text`` is tokenised with the tokenizer's special tokens (its BOS): yes in
    the plain format, no when a chat template wrote them or the text starts with the BOS already."""
    bos = tokenizer.bos_token
    return not (bos and text.startswith(bos)) and not has_chat_template(tokenizer)


def encode_text(tokenizer, text: str) -> list[int]:
    """Tokenise rendered text without adding a second BOS when the template already has one."""
    return list(tokenizer(text, add_special_tokens=adds_special_tokens(tokenizer, text))["input_ids"])


def end_of_turn_id(tokenizer) -> int:
    """The token that closes an answer: the first special token the chat template writes after an
    assistant message (Llama-3's ``<|eot_id|>``, ChatML's ``<|im_end|>``, Gemma's ``<end_of_turn>``),
    which need not be the tokenizer's EOS; the EOS without a template. Found once per tokenizer and
    template (kept on the tokenizer)."""
    key = (getattr(tokenizer, "chat_template", None), tokenizer.eos_token_id)
    found = getattr(tokenizer, "_unierase_end_of_turn", None)
    if found is None or found[0] != key:
        found = (key, _end_of_turn_from_template(tokenizer))
        setattr(tokenizer, "_unierase_end_of_turn", found)
    return found[1]


def _end_of_turn_from_template(tokenizer) -> int:
    if not has_chat_template(tokenizer):
        return tokenizer.eos_token_id
    marker = "Zq7 answer text"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "Q?"}, {"role": "assistant", "content": marker}],
                                             tokenize=False, date_string=PINNED_DATE)
    except Exception:  # noqa: BLE001 - a template that cannot render an assistant turn: fall back to EOS
        return tokenizer.eos_token_id
    after = text[text.find(marker) + len(marker):] if marker in text else ""
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for token in tokenizer(after, add_special_tokens=False)["input_ids"]:
        if token in special:
            return int(token)
    return tokenizer.eos_token_id


def answer_separator(chat: bool) -> str:
    """What goes between the rendered prompt and the answer text."""
    return "" if chat else " "


@dataclass
class EncodedQA:
    """Token ids of prompt + answer + end-of-turn and a label mask over the answer part."""

    input_ids: list[int]
    labels: list[int]  # -100 on prompt positions
    prompt_len: int


def encode_qa(tokenizer, question: str, answer: str, *, chat: bool | None = None, max_length: int | None = None) -> EncodedQA:
    """Answer-only labels: the answer tokens and the end-of-turn token are scored, the prompt is not."""
    if chat is None:
        chat = has_chat_template(tokenizer)
    prompt_ids = encode_text(tokenizer, render_prompt(tokenizer, question, chat=chat))
    answer_ids = tokenizer(answer_separator(chat) + answer, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + list(answer_ids) + [end_of_turn_id(tokenizer)]
    labels = [-100] * len(prompt_ids) + ids[len(prompt_ids):]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return EncodedQA(ids, labels, len(prompt_ids))


def pad_batch(sequences: list[list[int]], pad_id: int, *, labels: list[list[int]] | None = None, left: bool = False):
    """Pad to a batch; returns input_ids, attention_mask (and labels with -100 on padding)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    lab = torch.full((len(sequences), width), -100, dtype=torch.long) if labels is not None else None
    for row, seq in enumerate(sequences):
        sl = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, sl] = torch.tensor(seq, dtype=torch.long)
        mask[row, sl] = 1
        if lab is not None:
            lab[row, sl] = torch.tensor(labels[row], dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask}
    if lab is not None:
        out["labels"] = lab
    return out
