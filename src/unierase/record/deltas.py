"""Exact, compact records of how a round changed a set of tensors, so the round can be undone bit
for bit (``unierase revert``).

A UniErase round changes a few MLP output matrices by a low-rank ΔW. Subtracting a stored ΔW in
floating point does not give the old bits back exactly, so each changed matrix is stored as the
low-rank factors of (after − before) — the update's own factors where the method gives them
(``edit.applied``), else from an SVD in fp64 stored in fp32 for 16-bit weights — plus, for each
entry the update pushed across powers of two (rounding there lost bits of the old value), a bit
or a step count, plus the entries where ``after − U V`` still rounds to something other than
``before`` (their offsets in units in the last place, or their exact old values). Where that is
not smaller than the old tensor itself (a fine-tuning baseline changes every weight at
full rank), the old tensor is stored as it is. A tensor that only grew rows (the embedding after
the unlearning token is added) is stored as its old row count. Decoding is checked against the
old tensor's digest, so a revert is either exact or an error.
"""

from __future__ import annotations

import contextlib
import hashlib

import torch

from ..storage import UniEraseError

_SEP = "::"
_CHANGED = "undoing the change of {} did not give back its recorded weights (the checkpoint was changed after that round)"


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    t = tensor.detach().contiguous().cpu()
    digest = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _one_thread():
    """The low-rank product is computed the same way when it is stored and when it is undone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _reconstruct(after: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``after − u v`` rounded to ``after``'s dtype, and in fp64 (``_ambiguous`` reads both)."""
    with _one_thread():
        exact = after.to(torch.float64) - u.to(torch.float64) @ v.to(torch.float64)
    return exact.to(after.dtype), exact


def _ambiguous(after: torch.Tensor, exact: torch.Tensor, rounded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The entries whose old value rounding ``exact`` may miss (flat indices), and by how many powers
    of two the update pushed each one up.

    after = round(old + ΔW) is off (old + ΔW) by at most half of after's unit in the last place, so
    old lies that close to ``exact`` = after − ΔW. Where after's unit is 2^g times the rounded
    value's (the update crossed g powers of two upwards), that spans about 2^g representable values
    around it: g bits of old the rounding lost. Elsewhere the rounded value is old itself (up to
    exact ties, left to the fixes)."""
    gap = (torch.frexp(after.to(torch.float64)).exponent - torch.frexp(rounded.to(torch.float64)).exponent).reshape(-1)
    flat_rounded = rounded.reshape(-1)
    index = ((gap > 0) & (flat_rounded != 0) & (exact.reshape(-1) != flat_rounded.to(torch.float64))).nonzero().reshape(-1)
    return index, gap[index]


def _one_step(rounded: torch.Tensor, exact: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The representable neighbour of ``rounded`` on ``exact``'s side, at ``index`` (bit patterns of
    same-signed floats are ordered by magnitude)."""
    view = _INT_VIEW[rounded.element_size()]
    value = rounded.reshape(-1)[index]
    larger = (exact.reshape(-1)[index] > value.to(torch.float64)) == (value > 0)
    return (value.view(view).to(torch.int64) + torch.where(larger, 1, -1)).to(view).view(rounded.dtype)


def _resolve(rebuilt: torch.Tensor, exact: torch.Tensor, after: torch.Tensor, *, before: torch.Tensor | None = None,
             packed: torch.Tensor | None = None, steps: torch.Tensor | None = None):
    """Put back, in place, the old values rounding lost where the update crossed powers of two: for
    one power a bit (which of the two candidates), for more an int8 step count from the rounded
    value (0 where it does not fit; the fixes then hold it). Encoding (``before`` given): returns
    the bits packed and the steps. Decoding (``packed``, ``steps``): returns ``None`` where they do
    not fit the entries found (the checkpoint changed since)."""
    index, gap = _ambiguous(after, exact, rebuilt)
    one, many = index[gap == 1], index[gap > 1]
    if before is None and (one.numel() > 8 * packed.numel() or steps.numel() != many.numel()):
        return None
    other = _one_step(rebuilt, exact, one)
    if before is not None:
        flips = _ints(before)[one] == _ints(other)
        want, got = _ints(before)[many], _ints(rebuilt)[many]
        fits = ((want < 0) == (got < 0)) & ((want - got).abs() <= 127)
        steps = torch.where(fits, want - got, torch.zeros_like(want)).to(torch.int8)
    else:
        flips = _unpack_bits(packed, one.numel())
    rebuilt.reshape(-1)[one[flips]] = other[flips]
    _apply_ulps(rebuilt, many, steps)
    return _pack_bits(flips), steps


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.packbits(bits.numpy().astype(bool)))


def _unpack_bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.unpackbits(packed.numpy())[:count].astype(bool))


_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _ints(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns as integers (flat, int64)."""
    return t.contiguous().reshape(-1).view(_INT_VIEW[t.element_size()]).to(torch.int64)


def _svd_factors(before: torch.Tensor, after: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Factors (u, v) with u v ≈ after − before from its SVD, or None where they could not fit ``budget``."""
    diff = after.to(torch.float64) - before.to(torch.float64)
    s = torch.linalg.svdvals(diff)  # a third of a full SVD: enough to see whether factors can pay off
    if s.numel() == 0 or float(s[0]) == 0.0:
        return None
    # (after − before) is the real update plus after's rounding, a full-rank noise of about
    # eps·rms(after)/√3 per entry, whose singular values stay below ~(√m + √n) times that: keep what
    # stands clearly above it (a few noise directions kept cost bytes; a real one missed costs fixes)
    eps = torch.finfo(after.dtype).eps
    floor = 2 * eps * float(after.to(torch.float64).square().mean().sqrt()) * (diff.shape[0] ** 0.5 + diff.shape[1] ** 0.5)
    rank = max(1, int((s > floor).sum()))
    factor = factor_dtype(after.dtype)
    if rank * (diff.shape[0] + diff.shape[1]) * torch.finfo(factor).bits // 8 >= budget:
        return None
    u, s, vh = torch.linalg.svd(diff, full_matrices=False)
    return (u[:, :rank] * s[:rank]).to(factor).contiguous(), vh[:rank].to(factor).contiguous()


def factor_dtype(dtype: torch.dtype) -> torch.dtype:
    """Factors in fp32 for 16-bit weights (their rounding is far below the weights' units in the last
    place), in fp64 for wider ones (fp32 factors would leave most entries to the fixes)."""
    return torch.float32 if torch.finfo(dtype).bits <= 16 else torch.float64


def _low_rank(before: torch.Tensor, after: torch.Tensor, budget: int,
              factors: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor] | None:
    """Factors and fixes that give ``before`` back from ``after`` in fewer than ``budget`` bytes, or None.

    ``factors``: (u, v) with u v the change as it was applied (``edit.applied``), used as they are;
    otherwise they come from the change's SVD. ``after − u v`` rounds to ``before`` except where the
    update crossed powers of two (``_resolve``) and where the factors are not the change itself;
    the fixes are the offsets left, as int8 (sparse or dense, whichever is smaller), plus the exact
    old value where an offset does not fit.
    """
    if factors is None:
        factors = _svd_factors(before, after, budget)
        if factors is None:
            return None
    parts = {"u": factors[0].contiguous(), "v": factors[1].contiguous()}
    rebuilt, exact = _reconstruct(after, parts["u"], parts["v"])
    flips, steps = _resolve(rebuilt, exact, after, before=before)
    parts.update(flips=flips, steps=steps)
    want, got = _ints(before), _ints(rebuilt)
    offset = want - got
    same_sign = (want < 0) == (got < 0)
    small = same_sign & (offset.abs() <= 127)
    wrong = (offset != 0).nonzero().reshape(-1)
    exact = (~small).nonzero().reshape(-1)
    offsets = torch.where(small, offset, torch.zeros_like(offset)).to(torch.int8)
    if wrong.numel() * 5 < offsets.numel():
        keep = wrong[small[wrong]]
        parts.update(fix_index=keep.to(torch.int32), fix_ulps=offsets[keep].contiguous())
    else:
        parts["ulps"] = offsets.reshape(before.shape).contiguous()
    parts.update(exact_index=exact.to(torch.int64), exact_value=before.reshape(-1)[exact].contiguous())
    size = sum(t.numel() * t.element_size() for t in parts.values())
    return parts if size < budget else None


def _matching(factors: dict | None, name: str, shape) -> tuple[torch.Tensor, torch.Tensor] | None:
    pair = (factors or {}).get(name)
    if pair is None or pair[0].dim() != 2 or (pair[0].shape[0], pair[1].shape[-1]) != tuple(shape):
        return None
    return pair[0].cpu(), pair[1].cpu()


def _apply_ulps(rebuilt: torch.Tensor, index: torch.Tensor, ulps: torch.Tensor) -> None:
    """Shift the entries ``index`` of ``rebuilt`` (in place) by ``ulps`` units in the last place."""
    view = rebuilt.reshape(-1).view(_INT_VIEW[rebuilt.element_size()])
    view[index] = (view[index].to(torch.int64) + ulps.to(torch.int64)).to(view.dtype)


def _changed_rows(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor | None:
    """Indices of the rows that differ, when they are few (a trained token's embedding row)."""
    rows = (_ints(before).reshape(before.shape) != _ints(after).reshape(after.shape)).any(dim=1).nonzero().reshape(-1)
    return rows if rows.numel() * 8 <= before.shape[0] else None


def encode(changes: dict[str, tuple[torch.Tensor, torch.Tensor]],
           factors: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """``changes``: name → (before, after) of every tensor that changed; ``factors``: name → (u, v)
    with u v the change as the method applied it, where it knows them (the fixes make up for any
    difference, and the tensor is stored whole where that is smaller).

    Returns the tensors to save (safetensors) and, per name, how it is stored.
    """
    tensors: dict[str, torch.Tensor] = {}
    info: dict[str, dict] = {}
    for name, (before, after) in changes.items():
        before, after = before.detach().cpu(), after.detach().cpu()
        entry = {"digest_before": tensor_digest(before), "shape_before": list(before.shape), "dtype": str(before.dtype)}
        dense = before.numel() * before.element_size()
        if (before.dim() >= 1 and before.shape[1:] == after.shape[1:] and before.shape[0] < after.shape[0]
                and tensor_digest(after[:before.shape[0]]) == entry["digest_before"]):
            entry["kind"] = "rows_appended"
        elif before.shape == after.shape and before.dim() == 2 and (rows := _changed_rows(before, after)) is not None:
            entry.update(kind="rows", rows=int(rows.numel()))
            tensors[f"{name}{_SEP}row_index"] = rows
            tensors[f"{name}{_SEP}row_value"] = before[rows].contiguous()
        elif (before.shape == after.shape and before.dim() == 2 and before.is_floating_point()
              and before.dtype == after.dtype
              and (parts := _low_rank(before, after, dense, _matching(factors, name, before.shape))) is not None):
            entry.update(kind="low_rank", rank=int(parts["u"].shape[1]), bytes=sum(t.numel() * t.element_size() for t in parts.values()))
            tensors.update({f"{name}{_SEP}{key}": value for key, value in parts.items()})
        else:
            entry["kind"] = "dense"
            tensors[f"{name}{_SEP}before"] = before.contiguous()
        info[name] = entry
    return tensors, info


def decode(name: str, after: torch.Tensor, entry: dict, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The tensor before the round, from the tensor after it; checked against the stored digest."""
    after = after.detach().cpu()
    kind = entry.get("kind")
    try:
        if kind == "rows_appended":
            before = after[:entry["shape_before"][0]].clone()
        elif kind == "low_rank":
            get = lambda key: tensors[f"{name}{_SEP}{key}"]  # noqa: E731
            before, exact = _reconstruct(after, get("u"), get("v"))
            if (f"{name}{_SEP}flips" in tensors
                    and _resolve(before, exact, after, packed=get("flips"), steps=get("steps")) is None):
                raise UniEraseError(_CHANGED.format(name))
            if f"{name}{_SEP}ulps" in tensors:
                _apply_ulps(before, torch.arange(before.numel()), get("ulps").reshape(-1))
            else:
                _apply_ulps(before, get("fix_index").to(torch.int64), get("fix_ulps"))
            before.reshape(-1)[get("exact_index")] = get("exact_value").to(before.dtype)
        elif kind == "rows":
            before = after.clone()
            before[tensors[f"{name}{_SEP}row_index"]] = tensors[f"{name}{_SEP}row_value"].to(before.dtype)
        elif kind == "dense":
            before = tensors[f"{name}{_SEP}before"].clone()
        else:
            raise UniEraseError(f"unknown delta kind {kind!r} for {name}")
    except KeyError as err:
        raise UniEraseError(f"the revert data of {name} is incomplete (missing {err.args[0]})") from None
    if tensor_digest(before) != entry["digest_before"]:
        raise UniEraseError(_CHANGED.format(name))
    return before
