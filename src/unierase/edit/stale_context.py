"""Cheaper value steps: the question's words after the key token run only now and then.

δ enters at the key token; the answer's first token (and the scored refusal after it) reads it
directly, by attending to the key token, and indirectly, through the question's words between
the key token and the prompt's end, which attend to it too. A cheap step runs only the key token,
the prompt's end (the chat template's closing tokens) and the scored continuation, with the words
standing in as their key/value states from the last refresh, which recomputes them at the current
δ (the key token and the words only, no gradient).
The words lag δ by at most ``ValueConfig.context_refresh`` − 1 steps, and δ's gradient takes the
direct path only.

Layout of a cheap step (per row; padding masked): the cached prefix, the words' states, then the
key token, the prompt's end and the continuation as one forward. The key token comes before the
words in the prompt, so it must not see them: the mask is additive and 4-D, not causal in cache
order. Right after a refresh a cheap step gives the exact step's logits; ``PromptGroup`` checks that
once per group and runs exact steps where it does not hold.
"""

from __future__ import annotations

import copy

import torch

from ..generation import select_cache_rows
from ..models.tracing import head_at, replay_blocks


class StaleContext:
    """A ``PromptGroup``'s cheap step: what it runs (fixed per group) and the cache it runs on (per refresh)."""

    def __init__(self, group, middle: list[int]):
        """``middle[r]``: how many tokens after row r's key token are question words (stale between refreshes)."""
        device = group.device
        rows = torch.arange(len(middle), device=device)
        self.middle_len = torch.tensor(middle, device=device)
        self.middle_mask = torch.arange(max(middle), device=device)[None, :] < self.middle_len[:, None]
        lengths = group.mask[:, -group.suf.shape[1]:].sum(-1)  # each row's suffix (key token onwards)
        rest = lengths - 1 - self.middle_len  # the prompt's end + continuation, run every step
        j = torch.arange(int(rest.max()), device=device)
        rest_cols = (1 + self.middle_len[:, None] + j[None, :]).clamp(max=group.suf.shape[1] - 1)
        # the tokens a step runs: the key token, then the rest (right-padded)
        cols = torch.cat([torch.zeros_like(rows)[:, None], rest_cols], 1)
        self.ids, self.pos, self.block_out = group.suf.gather(1, cols), group.pos.gather(1, cols), group.block_out[rows[:, None], cols]
        run = torch.cat([torch.ones_like(rest[:, None], dtype=torch.bool), j[None, :] < rest[:, None]], 1)
        prefix_len = group.mask.shape[1] - group.suf.shape[1]
        queries = cols.shape[1]
        words = self.middle_mask[:, None, :].expand(-1, queries, -1).clone()
        words[:, 0] = False  # the key token comes before the words
        causal = torch.ones(queries, queries, dtype=torch.bool, device=device).tril()
        allowed = torch.cat([group.mask[:, None, :prefix_len].bool().expand(-1, queries, -1), words,
                             causal[None] & run[:, None, :]], 2)[:, None]
        dtype = group.block_out.dtype  # additive, as every attention implementation takes it
        self.mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
        # each logits column of the group's layout: the key token is run first, position p of the rest
        # at p − (words of the row)
        self.where = torch.where(torch.arange(group.positions.shape[1], device=device)[None, :] == 0, 0,
                                 group.positions - self.middle_len[:, None])
        self.context = None
        """The cached prefix followed by the words' states from the last refresh (above the edited
        layer; zeros below it, where blocks are replayed, keep the lengths equal)."""
        self.verified = False
        """Whether a cheap step right after a refresh reproduced the exact one (``PromptGroup``)."""

    def subset(self, idx: torch.Tensor) -> "StaleContext":
        sub = copy.copy(self)
        sub.middle_len, sub.middle_mask, sub.ids, sub.pos, sub.block_out, sub.mask, sub.where = (
            t[idx] for t in (self.middle_len, self.middle_mask, self.ids, self.pos, self.block_out, self.mask, self.where))
        if self.context is not None:
            sub.context = copy.deepcopy(self.context)
            select_cache_rows(sub.context, idx)
        return sub

    def refresh(self, group, cache, prefix_len: int) -> None:
        """Take the words' key/value states from ``cache``, a step's cache on top of the group's prefix."""
        width = self.middle_mask.shape[1]
        context = copy.deepcopy(group.cache)
        for i, (layer, ran) in enumerate(zip(context.layers, cache.layers)):
            if i <= group.z_layer:
                keys = layer.keys.new_zeros(*layer.keys.shape[:2], width, layer.keys.shape[-1])
                values = keys
            else:
                keys = ran.keys[:, :, prefix_len + 1: prefix_len + 1 + width].detach()
                values = ran.values[:, :, prefix_len + 1: prefix_len + 1 + width].detach()
            layer.keys, layer.values = torch.cat([layer.keys, keys], 2), torch.cat([layer.values, values], 2)
        self.context = context

    @torch.no_grad()
    def refresh_words(self, group, edit) -> None:
        """Recompute the words' states at the current δ: the key token and the words only, without a
        gradient (the words come before the rest of the prompt, so they need nothing after them)."""
        cache = copy.deepcopy(group.cache)
        prefix_len = cache.get_seq_length()
        n = 1 + self.middle_mask.shape[1]
        block_out = edit(group.block_out[:, :n])
        with replay_blocks(group.adapter.blocks, group.z_layer, lambda: block_out, tuple_output=group.tuple_output):
            group.model(input_ids=group.suf[:, :n], attention_mask=group.mask[:, :prefix_len + n],
                        position_ids=group.pos[:, :n], cache=cache, use_cache=True, logits_to_keep=1)
        self.refresh(group, cache, prefix_len)

    def logits(self, group, edit) -> torch.Tensor:
        """The group's logits in ``PromptGroup.logits``' layout, the question's words stale.

        One forward over the key token and the rest (the prompt's end and the continuation) on top of
        the cached prefix and the words' states: the key token attends to the prefix alone (the words
        come after it), the rest to all of it in order."""
        model = group.model
        block_out = edit(self.block_out)
        with replay_blocks(group.adapter.blocks, group.z_layer, lambda: block_out, tuple_output=group.tuple_output), \
                head_at(model.get_output_embeddings(), self.where):
            return model(input_ids=self.ids, attention_mask=self.mask, position_ids=self.pos,
                         cache=copy.deepcopy(self.context), use_cache=True, logits_to_keep=0).logits
