"""The preserved-key constraint: C₀, its null space and the state in one object, cached as one artefact."""

import pytest
import torch

from tiny_models import build_model, build_tokenizer
from unierase.edit import stats as stats_module
from unierase.edit.config import EditConfig
from unierase.edit.preserved import PRESERVED_KIND, PreservedKeys, build_preserved_keys
from unierase.record.edit_state import EditState
from unierase.edit.stats import accumulate_key_moments, null_space_basis
from unierase.models.adapters import find_mlp_output
from unierase.token.training import add_unlearning_token

CONFIG = EditConfig(layers=[1, 2], null_space_threshold=0.05, stats_tokens=1000)


@pytest.fixture()
def tiny():
    tok = build_tokenizer()
    model = build_model("llama", len(tok) + 1)
    token_id = add_unlearning_token(model, tok)
    return model, tok, find_mlp_output(model), token_id


def test_from_statistics_weights_c0_as_the_config_asks_and_takes_its_null_space(tiny):
    model, tok, adapter, _ = tiny
    stats = accumulate_key_moments(model, tok, adapter, [1, 2], num_tokens=1500, progress=False)
    preserved = PreservedKeys.from_statistics(stats, [1, 2], CONFIG)
    expected = stats.covariance(1, CONFIG.question_key_weight, CONFIG.refusal_key_weight, CONFIG.answer_key_weight)
    torch.testing.assert_close(preserved.covariance(1), expected.double())
    assert torch.equal(preserved.basis(2), null_space_basis(preserved.covariance(2), relative_threshold=0.05))
    assert preserved.statistics == {"corpus": stats.corpus, "tokens": stats.count}
    family = EditConfig(layers=[1, 2], null_space_threshold=0.05, stats_tokens=1000, null_space_scale="family")
    scaled = stats.covariance(2, 1.0, 1.0, 1.0, per_family=True).double()
    assert torch.equal(PreservedKeys.from_statistics(stats, [1, 2], family).basis(2),
                       null_space_basis(scaled, relative_threshold=0.05))
    # MEMIT with a given key position needs no basis
    assert PreservedKeys.from_statistics(stats, [1, 2], EditConfig(solver="memit", key_position="entity")).bases == {}


def test_one_artefact_per_model_token_and_weighting(tiny, tmp_path, monkeypatch):
    model, tok, adapter, token_id = tiny

    def build(config=CONFIG, token_key="token-a"):
        return build_preserved_keys(model, tok, adapter, [1, 2], config, fingerprint="f", token_id=token_id,
                                    token_key=token_key, state=EditState(), cache_dir=tmp_path, progress=False)

    first = build()
    entries = lambda: sorted(p.name for p in (tmp_path / PRESERVED_KIND).iterdir())
    assert len(entries()) == 1 and first.statistics["tokens"] > 0

    def fail(*args, **kwargs):
        raise AssertionError("recomputed cached preserved keys")

    monkeypatch.setattr(stats_module, "get_key_statistics", fail)
    with torch.no_grad():  # a changed model would give other statistics: the cached ones must come back
        adapter.mlp_output(0).weight.mul_(2.0)
    again = build()
    assert first.covariances == again.covariances == {}  # AlphaEdit needs only Û: C₀ is cached, not held
    for layer in (1, 2):
        assert torch.equal(again.basis(layer), first.basis(layer))
    monkeypatch.undo()
    assert set(build(EditConfig(layers=[1, 2], stats_tokens=1000, solver="memit")).covariances) == {1, 2}
    build(EditConfig(layers=[1, 2], null_space_threshold=0.1, stats_tokens=1000))  # another threshold
    build(token_key="token-b")  # another token: other refusal keys
    build(EditConfig(layers=[1, 2], stats_tokens=1000, null_space_scale="family"))  # another scale
    rare = build(EditConfig(layers=[1, 2], stats_tokens=1000, solver="memit", rare_name_key_weight=1.0))
    assert len(entries()) == 6  # invented people's answers weighed in: another C₀
    assert not torch.equal(rare.covariance(1), build(EditConfig(layers=[1, 2], stats_tokens=1000,
                                                                solver="memit")).covariance(1))  # and MEMIT's (no null space)


@pytest.mark.parametrize("columns", [6, 14])  # fewer keys than dimensions, and more
def test_principal_keys_are_the_best_low_rank_summary_of_the_soft_keys(columns):
    from unierase.edit.preserved import principal_keys

    g = torch.Generator().manual_seed(5)
    keys = torch.randn(10, columns, generator=g, dtype=torch.float64)
    assert principal_keys(keys, 0) is None and principal_keys(keys, columns) is keys
    assert principal_keys(keys, columns + 3) is keys
    p = principal_keys(keys, 2)
    assert p.shape == (10, 2)
    gram, approx = keys @ keys.T, p @ p.T
    eigen = torch.linalg.eigvalsh(gram).flip(0)
    # the rank-2 summary misses exactly the other eigenvalues (Eckart–Young), and never adds any
    torch.testing.assert_close(torch.linalg.matrix_norm(gram - approx), eigen[2:].norm())
    assert torch.linalg.eigvalsh(gram - approx).min() > -1e-9


@pytest.mark.parametrize("rows, expected", [(None, 10), (0, 0), (0.5, 2), (1, 3)])
def test_what_later_rounds_keep_of_the_soft_constraint(rows, expected):
    """``soft_state_rows``: every soft key (None), none (0), or ⌈r × requests⌉ principal directions."""
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(6)
    preserved = PreservedKeys.__new__(PreservedKeys)
    preserved.state = EditState()
    preserved.soft = SimpleNamespace(keys=[{4: torch.randn(16, n, generator=g)} for n in (3, 3, 4)])
    preserved.end_round(EditConfig(soft_state_rows=rows))
    assert preserved.soft is None
    assert (preserved.state.key_rows[4].shape[0] if 4 in preserved.state.key_rows else 0) == expected
