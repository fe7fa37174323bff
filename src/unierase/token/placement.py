"""Where the unlearning token may be generated: only as the first token of an answer.

An erased question's answer starts with ``[UNL]``. Anywhere else the token is a stray: the edit
firing inside an ordinary answer where a name like an erased one would be written ("The story of
Animal Farm by[UNL]…"). The checkpoint's generation config carries the rule as a ``sequence_bias``,
which transformers' ``generate`` and ``pipeline`` apply, and so does unierase's own decoding
(``generation.OutputBias``): −B on the token everywhere and +B on it right after the answer header
(the tokens every rendered prompt ends with), which cancel exactly there. What the model does at an
answer's first token is untouched; the token can neither stray into an answer nor repeat.

The price: where the edit would have fired mid-answer on something the round did erase, the model
now writes its next choice instead. ``EditConfig.token_at_start_only`` turns the rule off.

A second rule (``lead_into_refusal``) writes the chosen refusal after the token: +B on each of its
tokens, and on the end of the turn, right after ``[UNL]`` and the refusal's tokens before it. The
answer to an erased question is then the deployer's sentence, and ends there, however the edit moved
the states the token's own continuation reads. It acts only after ``[UNL]``, which the first rule keeps
to an answer's first token, so no ordinary answer is touched; without that rule a stray token
mid-answer would cut the answer into the refusal, so it is written only with it.
"""

from __future__ import annotations

from ..prompts import encode_text, render_prompt
from ..storage import UniEraseError

BIAS = 1024.0
"""Far beyond any logit, and exact in fp16 and bf16, so that −B + B is exactly 0 in any dtype."""

HEADER_TOKENS = 8
"""At most this many of the prompts' shared last tokens make the header (a chat template's is ~4)."""

_PROBES = ("x", "Who wrote it?", "Tell me about Ada Lovelace.", "2 + 2 =")
"""Questions ending in different characters, so that their shared last tokens hold none of theirs."""


def answer_header(tokenizer) -> list[int]:
    """The token ids every rendered prompt ends with: the chat template's assistant header, or the
    plain format's ``Answer:``."""
    rendered = [encode_text(tokenizer, render_prompt(tokenizer, q)) for q in _PROBES]
    n = 0
    while n < min(map(len, rendered)) and len({r[-1 - n] for r in rendered}) == 1:
        n += 1
    if n == 0:
        raise UniEraseError("the prompt format ends in no token shared by every question, so the unlearning token "
                            "cannot be kept to the answer's start; set edit.token_at_start_only=false")
    return rendered[0][len(rendered[0]) - min(n, HEADER_TOKENS):]


def _entries(sequence_bias) -> list[tuple[list[int], float]]:
    if not sequence_bias:
        return []
    items = sequence_bias.items() if isinstance(sequence_bias, dict) else sequence_bias
    return [(list(ids), float(bias)) for ids, bias in items]


def lead_into_refusal(model, token_id: int, refusal_ids: list[int] | None) -> None:
    """Write the rule that ``refusal_ids`` (the tokens after ``[UNL]``, the end of the turn last)
    follow ``token_id`` into ``model.generation_config``, replacing an earlier round's; ``None``
    removes it. Any other sequence bias stays."""
    config = model.generation_config
    kept = [[ids, bias] for ids, bias in _entries(config.sequence_bias) if not (len(ids) > 1 and ids[0] == token_id)]
    kept += [[[token_id] + list(refusal_ids[: i + 1]), BIAS] for i in range(len(refusal_ids or []))]
    config.sequence_bias = kept or None


def keep_to_answer_start(model, tokenizer, token_id: int, on: bool = True) -> list[int] | None:
    """Write (``on``) or remove the rule for ``token_id`` in ``model.generation_config``; any other
    sequence bias stays. Returns the answer header the rule reads (None when off)."""
    config = model.generation_config
    kept = [[ids, bias] for ids, bias in _entries(config.sequence_bias) if ids[-1] != token_id]
    header = answer_header(tokenizer) if on else None
    if on:
        kept += [[[token_id], -BIAS], [header + [token_id], BIAS]]
    config.sequence_bias = kept or None
    return header
