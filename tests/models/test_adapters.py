import pytest
import torch
from torch import nn

from tiny_models import ARCHITECTURES, build_model
from unierase.models.adapters import find_mlp_output
from unierase.models.tracing import edit_output, stop_after, trace
from unierase.storage import UniEraseError

EXPECTED = {
    "llama": ("mlp.down_proj", False), "qwen2": ("mlp.down_proj", False), "mistral": ("mlp.down_proj", False),
    "gemma2": ("mlp.down_proj", False), "gpt2": ("mlp.c_proj", True), "gpt_neox": ("mlp.dense_4h_to_h", False),
    "phi": ("mlp.fc2", False),
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_adapter_finds_mlp_output_and_applies_updates(arch, tiny_tokenizer):
    model = build_model(arch, len(tiny_tokenizer))
    adapter = find_mlp_output(model)
    assert (adapter.mlp_output_path, adapter.transposed) == EXPECTED[arch]
    assert adapter.num_layers == 4
    module = adapter.mlp_output(1)
    d, m = adapter.weight(1).shape
    key = torch.randn(1, 1, m)
    before = module(key).detach()
    delta = torch.randn(d, m) * 0.1
    adapter.add_to_weight(1, delta)
    after = module(key).detach()
    torch.testing.assert_close(after - before, (delta @ key[0, 0])[None, None], atol=1e-5, rtol=1e-4)


def test_unsupported_model_names_what_was_searched():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc2 = nn.Linear(4, 4)  # OPT-style: not under .mlp

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 2})()
            self.layers = nn.ModuleList([Block(), Block()])

    with pytest.raises(UniEraseError, match="mlp.down_proj.*mlp.c_proj.*mlp.dense_4h_to_h.*mlp.fc2"):
        find_mlp_output(Model())


def test_tracing_captures_edits_and_stops(tiny_llama):
    model, tok = tiny_llama
    adapter = find_mlp_output(model)
    ids = torch.tensor([[1, 2, 3, 4]])
    with trace(adapter.mlp_output(2), keep_input=True, keep_output=True) as rec:
        base = model(input_ids=ids).logits
    assert rec.input.shape[-1] == 64 and rec.output.shape[-1] == 32
    with edit_output(adapter.block(2), lambda h: h + 1.0):
        changed = model(input_ids=ids).logits
    assert not torch.allclose(base, changed)
    with trace(adapter.mlp_output(0), keep_input=True) as low, trace(adapter.mlp_output(3), keep_input=True) as high, stop_after(adapter.mlp_output(0)):
        model(input_ids=ids)
    assert low.input is not None and high.input is None


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_head_at_gives_each_rows_logits_at_its_own_positions(arch, tiny_tokenizer):
    from unierase.models.tracing import head_at

    model = build_model(arch, len(tiny_tokenizer))
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    positions = torch.tensor([[0, 4, 2], [3, 3, 1]])
    with torch.no_grad():
        full = model(input_ids=ids).logits
        with head_at(model.get_output_embeddings(), positions):
            picked = model(input_ids=ids, logits_to_keep=0).logits
    assert picked.shape == (2, 3, full.shape[-1])
    torch.testing.assert_close(picked, full[torch.arange(2)[:, None], positions])
