"""A model split by a device map edits to the same checkpoint as the whole one (issue: large models).

On a CPU the one real split is offloading: layers 2–3 live on disk and are read in as they run,
while the edited layer (1, the default for four layers) and the embeddings stay in memory. The
MEMIT solve is used because the tiny model's null space is empty at the default threshold, and a
round that changes no weight would prove nothing. The checkpoint written — token,
edit, untied output row — must be byte for byte the one the unsplit model gives, and ``verify``
must hold through the same map."""

import json

import pytest

from tiny_models import build_model, build_tokenizer
from unierase.cli import main

SPLIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
         "model.layers.2": "disk", "model.layers.3": "disk", "model.norm": "cpu", "lm_head": "cpu"}


@pytest.fixture
def setup(tmp_path):
    tok = build_tokenizer()
    build_model("llama", len(tok) + 1).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    requests = tmp_path / "forget.jsonl"
    requests.write_text('{"question": "What is the capital of France?"}\n{"question": "Who wrote Hamlet?"}\n')
    return tmp_path, requests


def _forget(tmp_path, requests, name, *extra):
    return main(["-q", "forget", "--model", str(tmp_path / "base"), "--requests", str(requests), "--out",
                 str(tmp_path / name), "--cache-dir", str(tmp_path / f"cache-{name}"), "--set", 'edit.solver="memit"',
                 "--stats-tokens", "2000", "--max-passes", "2", "--no-progress", "--force", *extra])


def test_a_model_with_offloaded_layers_edits_to_the_same_checkpoint(setup):
    from safetensors.torch import load_file

    tmp_path, requests = setup
    assert _forget(tmp_path, requests, "whole") == 0
    assert _forget(tmp_path, requests, "split", "--device-map", json.dumps(SPLIT)) == 0
    whole, split = (load_file(tmp_path / name / "model.safetensors") for name in ("whole", "split"))
    assert sorted(whole) == sorted(split) and all((whole[k] == split[k]).all() for k in whole)
    base = load_file(tmp_path / "base" / "model.safetensors")
    assert not (whole["model.layers.1.mlp.down_proj.weight"] == base["model.layers.1.mlp.down_proj.weight"]).all()
    assert main(["verify", str(tmp_path / "split"), "--device-map", json.dumps(SPLIT)]) == 0


def test_offloading_a_layer_the_round_changes_is_refused_up_front(setup, capsys):
    tmp_path, requests = setup
    offloaded = {**SPLIT, "model.layers.1": "disk"}
    assert _forget(tmp_path, requests, "bad", "--device-map", json.dumps(offloaded)) != 0
    assert "the device map offloads weights this round changes (model.layers.1.mlp.down_proj.weight" in \
        capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
