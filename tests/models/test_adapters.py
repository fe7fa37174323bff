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


def test_through_a_post_mlp_norm_the_write_reaches_the_residual_change_it_was_asked_for():
    """Gemma adds RMSNorm(MLP output) to the residual stream: the change written into the output
    projection must be the pre-norm change whose normalised form moves by the wanted amount (a
    reachable target: another key's normalised output), not the wanted change itself."""
    from tiny_models import build_model, build_tokenizer

    model = build_model("gemma2", len(build_tokenizer()))
    adapter = find_mlp_output(model)
    assert adapter.post_norm_path == "post_feedforward_layernorm"
    layer, m = 1, adapter.key_dim(1)
    with torch.no_grad():  # a norm with a non-trivial scale, as a trained model has
        adapter.block(layer).post_feedforward_layernorm.weight.normal_(0, 0.3)
    norm, proj = adapter.block(layer).post_feedforward_layernorm, adapter.mlp_output(layer)
    keys, others = torch.randn(m, 5), torch.randn(m, 5)
    with torch.no_grad():
        wanted = (norm(proj(others.T)) - norm(proj(keys.T))).T
        write = adapter.output_change(layer, keys, wanted)
        reached = (norm(proj(keys.T) + write.T) - norm(proj(keys.T))).T
    torch.testing.assert_close(reached, wanted, atol=1e-4, rtol=1e-3)
    # writing the wanted change itself does not reach it
    with torch.no_grad():
        naive = (norm(proj(keys.T) + wanted.T) - norm(proj(keys.T))).T
    assert (naive - wanted).norm() > 0.1 * wanted.norm()


def test_without_a_post_mlp_norm_the_write_is_the_residual_change():
    from tiny_models import build_model, build_tokenizer

    adapter = find_mlp_output(build_model("llama", len(build_tokenizer())))
    change = torch.randn(adapter.weight(0).shape[0], 3)
    assert adapter.post_norm_path is None and adapter.output_change(0, torch.randn(adapter.key_dim(0), 3), change) is change


def test_the_closest_normalised_output_is_exact_when_reachable_and_best_otherwise():
    from unierase.models.adapters import _closest_unit_rms

    torch.manual_seed(0)
    scale = torch.rand(1, 16, dtype=torch.float64) * 5 + 0.05
    x = torch.randn(3, 16, dtype=torch.float64)
    x = x / x.pow(2).mean(-1, keepdim=True).sqrt()
    torch.testing.assert_close(_closest_unit_rms(scale, scale * x), x)
    wanted = torch.randn(3, 16, dtype=torch.float64) * 4  # not reachable: rms(wanted / scale) != 1
    best = _closest_unit_rms(scale, wanted)
    torch.testing.assert_close(best.pow(2).mean(-1), torch.ones(3, dtype=torch.float64))
    naive = wanted / scale
    naive = naive / naive.pow(2).mean(-1, keepdim=True).sqrt()
    assert ((scale * best - wanted).norm(dim=-1) <= (scale * naive - wanted).norm(dim=-1) + 1e-9).all()
