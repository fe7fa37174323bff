"""Context managers that capture or modify a module's input/output (ROME/MEMIT-style tracing)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn


class Capture:
    """Holds what a traced module saw; ``input``/``output`` are set after the forward pass."""

    input: torch.Tensor | None = None
    output: torch.Tensor | None = None
    tuple_output: bool = False
    """Whether the module returned a tuple (hidden states first), as some blocks do."""


@contextlib.contextmanager
def trace(module: nn.Module, *, keep_input: bool = False, keep_output: bool = False, detach: bool = True) -> Iterator[Capture]:
    """Record ``module``'s first positional input and/or output (first element of a tuple)."""
    record = Capture()

    def hook(_module, args, output):
        if keep_input:
            record.input = args[0].detach() if detach else args[0]
        record.tuple_output = isinstance(output, tuple)
        if keep_output:
            out = output[0] if isinstance(output, tuple) else output
            record.output = out.detach() if detach else out

    handle = module.register_forward_hook(hook)
    try:
        yield record
    finally:
        handle.remove()


@contextlib.contextmanager
def edit_output(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace ``module``'s output hidden states by ``fn(hidden)`` during the block."""

    def hook(_module, _args, output):
        if isinstance(output, tuple):
            return (fn(output[0]),) + tuple(output[1:])
        return fn(output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def head_at(head: nn.Module, positions: torch.Tensor) -> Iterator[None]:
    """Run the output layer ``head`` only at ``positions[r]`` (a row of columns) of each row r: the
    model's logits come out rows × columns. Call the model with every position kept
    (``logits_to_keep=0``); the head then costs what the positions need, not their union over rows."""
    rows = torch.arange(positions.shape[0], device=positions.device)[:, None]

    def hook(_module, args):
        return (args[0][rows, positions.to(args[0].device)],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class StopForward(Exception):
    """Raised by ``stop_after`` to skip the layers above the last one whose activations are needed."""


@contextlib.contextmanager
def stop_after(module: nn.Module) -> Iterator[None]:
    """Abort the forward pass once ``module`` has run; the ``with`` block swallows the abort.

    Use it around a forward call whose only purpose is to record activations of lower layers.
    """

    def hook(_module, _args, _output):
        raise StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield
    except StopForward:
        pass
    finally:
        handle.remove()


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Turn off ``requires_grad`` on every parameter for the block, then restore the flags.

    When only an activation (a δ added to a hidden state) is optimised, autograd would otherwise
    also compute every weight's gradient on the way back — about half of the backward pass.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class _StandIn(nn.Module):
    """Takes a block's place in its ModuleList: returns ``fn(hidden_states)`` in the block's output
    format. Attribute look-ups the model makes on its layers (e.g. ``attention_type``) still reach
    the original block."""

    def __init__(self, block: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor], tuple_output: bool):
        super().__init__()
        object.__setattr__(self, "_block", block)  # not registered as a submodule
        self._fn, self._tuple = fn, tuple_output

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)

    def forward(self, hidden_states, *args, **kwargs):
        out = self._fn(hidden_states)
        return (out,) if self._tuple else out


@contextlib.contextmanager
def replay_blocks(blocks: nn.ModuleList, last: int, output: Callable[[], torch.Tensor], *, tuple_output: bool) -> Iterator[None]:
    """Skip blocks ``0 … last`` whose output is already known: the blocks below ``last`` pass their
    input through, block ``last`` returns ``output()``; the blocks above run as usual.

    For repeated forward passes that only change block ``last``'s output (an optimised δ), this
    saves the cost of every block up to it. The key/value cache of the skipped blocks is not updated.
    """
    saved = [blocks[i] for i in range(last + 1)]
    try:
        for i in range(last):
            blocks[i] = _StandIn(saved[i], lambda h: h, tuple_output)
        blocks[last] = _StandIn(saved[last], lambda _h: output(), tuple_output)
        yield
    finally:
        for i, block in enumerate(saved):
            blocks[i] = block
