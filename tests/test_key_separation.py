"""benchmarks/key_separation.py: the share of a rank-one edit that another key receives."""

import importlib.util
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "key_separation.py"


def _module(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # the script imports its sibling module, as run from benchmarks/
    spec = importlib.util.spec_from_file_location("key_separation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_a_key_receives_all_of_its_own_edit_and_its_share_of_anothers(monkeypatch):
    module = _module(monkeypatch)
    keys = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)  # columns k0, k1, k2
    shares = module.leak_shares(keys, torch.eye(2, dtype=torch.float64), ridge=0.0)
    assert torch.allclose(shares.diagonal(), torch.ones(3, dtype=torch.float64))
    # with C = I: k1ᵀk0 / k0ᵀk0 = 1, k0ᵀk1 / k1ᵀk1 = 1/2, k2 ⟂ k0
    assert shares[0, 1] == 1.0 and shares[1, 0] == 0.5 and shares[0, 2] == 0.0
    # C⁻¹ weighs a direction the corpus rarely uses more: k2's share of k1's edit grows as C shrinks along it
    shrunk = module.leak_shares(keys, torch.diag(torch.tensor([1.0, 0.1], dtype=torch.float64)), ridge=0.0)
    assert shrunk[1, 2] > shares[1, 2]


def test_pairs_are_sorted_into_kinds(monkeypatch):
    module = _module(monkeypatch)
    rows = [{"subject": "Vietnam", "relation": "currency"}, {"subject": "Vietnam", "relation": "language"},
            {"subject": "Peru", "relation": "currency"}, {"subject": "Chile", "relation": "capital"}]
    kinds = module.pair_kinds(rows)
    assert set(kinds["sibling"]) == {(0, 1), (1, 0)}
    assert set(kinds["shape"]) == {(0, 2), (2, 0)}
    assert (0, 3) in kinds["unrelated"] and (1, 2) in kinds["unrelated"] and len(kinds["unrelated"]) == 8
