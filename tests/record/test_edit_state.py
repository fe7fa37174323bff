"""The sequential edit state."""

import torch

from unierase.record.edit_state import EditState


def test_the_projected_state_follows_added_keys():
    """``projected`` equals Ûᵀ (Σ k kᵀ) Û after keys are added (rank-N updates of the cached matrix)."""
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(12, 5, generator=g, dtype=torch.float64))[0]
    state = EditState()
    assert state.projected(3, basis) is None
    first, second = torch.randn(12, 4, generator=g), torch.randn(12, 2, generator=g)
    state.add(3, first)
    before = state.projected(3, basis).clone()
    state.add(3, second)
    for got, keys in ((before, first), (state.projected(3, basis), torch.cat([first, second], 1))):
        k = keys.double()
        torch.testing.assert_close(got, basis.T @ (k @ k.T) @ basis)


def _sum(keys: torch.Tensor) -> torch.Tensor:
    k = keys.double()
    return k @ k.T


def test_keys_are_kept_as_rows_until_they_outnumber_the_dimensions(tmp_path):
    """The state's size follows what was erased: n × m key rows while n ≤ m, then the m × m sum;
    either form gives the same Σ k kᵀ and survives save/load."""
    g = torch.Generator().manual_seed(1)
    first, second = torch.randn(8, 5, generator=g), torch.randn(8, 6, generator=g)
    state = EditState()
    state.add(2, first)
    assert 2 in state.key_rows and not state.previous_keys and state.key_rows[2].shape == (5, 8)
    torch.testing.assert_close(state.get(2), _sum(first))
    state.save(tmp_path)
    assert torch.equal(EditState.load(tmp_path).key_rows[2], state.key_rows[2])
    state.add(2, second)  # 11 keys > 8 dimensions
    assert 2 in state.previous_keys and not state.key_rows
    torch.testing.assert_close(state.get(2), _sum(torch.cat([first, second], 1)))
    state.save(tmp_path)
    assert torch.equal(EditState.load(tmp_path).previous_keys[2], state.previous_keys[2])


def test_the_projected_state_of_key_rows():
    g = torch.Generator().manual_seed(2)
    basis = torch.linalg.qr(torch.randn(12, 5, generator=g, dtype=torch.float64))[0]
    keys = torch.randn(12, 3, generator=g)
    state = EditState()
    state.add(0, keys)
    torch.testing.assert_close(state.projected(0, basis), basis.T @ _sum(keys) @ basis)


def test_revert_data_of_the_state_is_a_row_count_and_gives_it_back_bit_for_bit():
    """A round that appends key rows records no tensor; one that turns rows into the sum keeps the old
    rows whole; one that adds to the sum records the difference. Each undoes to the exact bits."""
    from types import SimpleNamespace

    from unierase.record.rounds import _state_deltas
    from unierase.record.trail import undo_state

    g = torch.Generator().manual_seed(3)
    state = EditState()
    snapshots = [state.tensors()]
    for n in (3, 2, 7, 4):  # rows, rows, rows → sum (12 > 8), sum
        state.add(1, torch.randn(8, n, generator=g))
        snapshots.append(state.tensors())
    kinds = []
    for before, after in zip(snapshots, snapshots[1:]):
        data, info = _state_deltas(SimpleNamespace(state=before), EditState.from_tensors(after))
        kinds.append(sorted(item["kind"] for item in info.values()))
        restored = dict(after)
        undo_state(restored, info, data)
        assert set(restored) == set(before)
        assert all(torch.equal(restored[n], before[n]) for n in before)
    assert kinds[0] == ["absent"] and kinds[1] == ["rows_appended"]
    assert kinds[2] == ["absent", "dense"]  # the sum appears (absent before); the old rows kept whole
    assert "rows_appended" not in kinds[3] and len(kinds[3]) == 1


def test_key_rows_are_kept_in_the_keys_own_precision_and_an_older_fp64_state_stays_fp64(tmp_path):
    """fp32 keys are stored as fp32 rows (half the bytes of fp64, nothing lost); a state an earlier
    version saved in fp64 keeps its rows bit for bit and appends in fp64; both validate."""
    g = torch.Generator().manual_seed(4)
    keys = torch.randn(8, 3, generator=g)
    state = EditState()
    state.add(0, keys)
    assert state.key_rows[0].dtype == torch.float32 and torch.equal(state.key_rows[0], keys.T)
    state.validate([0], 8)
    old = EditState(key_rows={0: keys.T.double()})
    kept = old.key_rows[0].clone()
    old.add(0, torch.randn(8, 2, generator=g))
    assert old.key_rows[0].dtype == torch.float64 and torch.equal(old.key_rows[0][:3], kept)
    old.validate([0], 8)
    torch.testing.assert_close(old.get(0), _sum(torch.cat([keys, old.key_rows[0][3:].T.float()], 1)))


def test_a_16_bit_models_key_rows_are_kept_in_its_dtype(tmp_path):
    """A bf16 model's rows are bf16 (half the bytes of fp32), saved and read back as they are; the
    projected state follows the rows as kept; an fp32 state from an earlier round stays fp32."""
    from unierase.record.edit_state import row_dtype_for

    assert row_dtype_for(torch.bfloat16) == torch.bfloat16 and row_dtype_for(torch.float16) == torch.float16
    assert row_dtype_for(torch.float32) == torch.float32
    g = torch.Generator().manual_seed(5)
    keys = torch.randn(8, 3, generator=g)
    basis = torch.linalg.qr(torch.randn(8, 4, generator=g, dtype=torch.float64))[0]
    state = EditState(row_dtype=torch.bfloat16)
    state.add(0, keys[:, :1])
    state.projected(0, basis)
    state.add(0, keys[:, 1:])
    assert state.key_rows[0].dtype == torch.bfloat16 and torch.equal(state.key_rows[0], keys.T.to(torch.bfloat16))
    kept = state.key_rows[0].double()
    torch.testing.assert_close(state.projected(0, basis), basis.T @ kept.T @ kept @ basis)
    state.validate([0], 8)
    state.save(tmp_path)
    assert torch.equal(EditState.load(tmp_path).key_rows[0], state.key_rows[0])
    older = EditState(key_rows={0: keys.T.clone()}, row_dtype=torch.bfloat16)
    older.add(0, keys[:, :1])
    assert older.key_rows[0].dtype == torch.float32
