"""benchmarks/lost_neighbours.py: the edited layers' MLP outputs put back at chosen positions."""

import copy
import importlib.util
import sys
from pathlib import Path

import torch

from tiny_models import build_model, build_tokenizer

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lost_neighbours.py"


def _script(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # the script imports its sibling module, as run from benchmarks/
    spec = importlib.util.spec_from_file_location("lost_neighbours", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_outputs_put_back_everywhere_give_the_unedited_model_and_at_one_position_leave_the_earlier_ones(monkeypatch):
    from unierase.models.adapters import find_mlp_output

    script = _script(monkeypatch)
    tok = build_tokenizer()
    base = build_model("llama", len(tok))
    edited = copy.deepcopy(base)
    weight = find_mlp_output(edited).mlp_output(1).weight
    with torch.no_grad():
        weight.add_(torch.randn_like(weight))
    ids = torch.tensor([tok("What is the capital of France?")["input_ids"]])
    recorded: dict = {}
    with script._mlp_outputs(find_mlp_output(base), [1], recorded), torch.no_grad():
        unedited = base(ids).logits
        as_edited = edited(ids).logits
    assert not torch.allclose(as_edited, unedited) and set(recorded) == {1}
    everywhere = (recorded, list(range(ids.shape[1])))
    with script._mlp_outputs(find_mlp_output(edited), [1], {}, everywhere), torch.no_grad():
        torch.testing.assert_close(edited(ids).logits, unedited)
    last = (recorded, [ids.shape[1] - 1])
    with script._mlp_outputs(find_mlp_output(edited), [1], {}, last), torch.no_grad():
        partly = edited(ids).logits
    torch.testing.assert_close(partly[:, :-1], as_edited[:, :-1])  # a causal model: the earlier positions as edited
    assert not torch.allclose(partly[:, -1], as_edited[:, -1])
