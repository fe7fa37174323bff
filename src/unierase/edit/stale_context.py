"""Cheaper value steps: the question's words after the key token run only now and then.

δ enters at the key token; the answer's first token (and the scored refusal after it) reads it
directly, by attending to the key token, and indirectly, through the question's words between
the key token and the prompt's end, which attend to it too. A cheap step runs only the key token,
the prompt's end (the chat template's closing tokens) and the scored continuation — for a TOFU
question 15 of 33 positions — with the words standing in as their key/value states from the last
refresh, which recomputes them at the current δ (the key token and the words only, no gradient).
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

from ..models.tracing import head_at, replay_blocks


class StaleContext:
    """Positions of a ``PromptGroup``'s rows in the cheap step, and the words' states from the last refresh."""

    def __init__(self, group, middle: list[int]):
        """``middle[r]``: how many tokens after row r's key token are question words (stale between refreshes)."""
        device = group.device
        self.middle_len = torch.tensor(middle, device=device)
        cols = torch.arange(max(middle), device=device)
        self.middle_mask = cols[None, :] < self.middle_len[:, None]
        lengths = group.mask[:, -group.suf.shape[1]:].sum(-1)  # each row's suffix (key token onwards)
        rest = lengths - 1 - self.middle_len  # the prompt's end + continuation, run every step
        j = torch.arange(int(rest.max()), device=device)
        self.rest_cols = (1 + self.middle_len[:, None] + j[None, :]).clamp(max=group.suf.shape[1] - 1)
        """Suffix position of each token run after the key token (right-padded)."""
        self.rest_mask = j[None, :] < rest[:, None]
        self.states: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        """Per layer above the edited one: the words' keys and values from the last refresh."""
        self.verified = False
        """Whether a cheap step right after a refresh reproduced the exact one (``PromptGroup``)."""

    def subset(self, idx: torch.Tensor) -> "StaleContext":
        sub = copy.copy(self)
        sub.middle_len, sub.middle_mask, sub.rest_cols, sub.rest_mask = (
            t[idx] for t in (self.middle_len, self.middle_mask, self.rest_cols, self.rest_mask))
        if self.states is not None:
            sub.states = [(k[idx], v[idx]) for k, v in self.states]
        return sub

    def refresh(self, cache, prefix_len: int, z_layer: int) -> None:
        """Keep the words' key/value states from an exact step's cache (``prefix_len``: the cached prefix)."""
        width = self.middle_mask.shape[1]
        self.states = [(layer.keys[:, :, prefix_len + 1: prefix_len + 1 + width].detach(),
                        layer.values[:, :, prefix_len + 1: prefix_len + 1 + width].detach())
                       for layer in cache.layers[z_layer + 1:]]

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
        self.refresh(cache, prefix_len, group.z_layer)

    def logits(self, group, edit) -> torch.Tensor:
        """The group's logits in ``PromptGroup.logits``' layout, the question's words stale.

        One forward over the key token and the rest (the prompt's end and the continuation) on top of
        the cached prefix and the words' states: the key token attends to the prefix alone (the words
        come after it), the rest to all of it in order."""
        model, z_layer = group.model, group.z_layer
        rows = torch.arange(len(group.members), device=group.device)
        cache = copy.deepcopy(group.cache)
        prefix_len = cache.get_seq_length()
        width = self.middle_mask.shape[1]
        for i, layer in enumerate(cache.layers):  # the skipped blocks' cache only keeps the lengths equal
            if i <= z_layer:
                pad = layer.keys.new_zeros(*layer.keys.shape[:2], width, layer.keys.shape[-1])
                layer.keys, layer.values = torch.cat([layer.keys, pad], 2), torch.cat([layer.values, pad], 2)
            else:
                keys, values = self.states[i - z_layer - 1]
                layer.keys, layer.values = torch.cat([layer.keys, keys], 2), torch.cat([layer.values, values], 2)
        cols = torch.cat([torch.zeros_like(rows)[:, None], self.rest_cols], 1)  # suffix positions run now
        run = torch.cat([torch.ones_like(self.rest_mask[:, :1]), self.rest_mask], 1)
        queries = cols.shape[1]
        words = self.middle_mask[:, None, :].expand(-1, queries, -1).clone()
        words[:, 0] = False  # the key token comes before the words
        causal = torch.ones(queries, queries, dtype=torch.bool, device=group.device).tril()
        allowed = torch.cat([group.mask[:, None, :prefix_len].bool().expand(-1, queries, -1), words,
                             causal[None] & run[:, None, :]], 2)[:, None]
        dtype = group.block_out.dtype  # additive, as every attention implementation takes it
        mask = torch.zeros(allowed.shape, dtype=dtype, device=group.device).masked_fill(~allowed, torch.finfo(dtype).min)
        # each logits column of the group's layout: the key token is run first, position p of the
        # rest at p − (words of the row)
        where = torch.where(torch.arange(group.positions.shape[1], device=group.device)[None, :] == 0, 0,
                            group.positions - self.middle_len[:, None])
        block_out = edit(group.block_out[rows[:, None], cols])
        with replay_blocks(group.adapter.blocks, z_layer, lambda: block_out, tuple_output=group.tuple_output), \
                head_at(model.get_output_embeddings(), where):
            return model(input_ids=group.suf.gather(1, cols), attention_mask=mask, position_ids=group.pos.gather(1, cols),
                         cache=cache, use_cache=True, logits_to_keep=0).logits
