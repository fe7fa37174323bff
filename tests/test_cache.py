"""The one cache: content-addressed keys, atomic entries, unreadable entries recomputed."""

import types

import torch

from unierase.cache import Cache, code_digest, content_key
from unierase.edit.values import ValueConfig


def test_keys_follow_the_content():
    assert content_key("f", {"a": 1, "b": 2}) == content_key("f", {"b": 2, "a": 1})
    assert content_key("f", ValueConfig()) == content_key("f", ValueConfig().to_dict())
    assert content_key("f", ValueConfig()) != content_key("f", ValueConfig(lr=0.2))
    assert content_key("f", [1, 2]) != content_key("g", [1, 2])


def test_the_code_that_computes_an_artefact_is_part_of_its_key(tmp_path, monkeypatch):
    from unierase import cache as cache_module

    sources = {"a": "def f(): return 1\n"}
    monkeypatch.setattr(cache_module.inspect, "getsource", lambda module: sources[module.__name__])
    module = types.ModuleType("a")
    first = code_digest(module)
    sources["a"] = "def f(): return 2\n"
    assert code_digest(module) != first


def test_entries_round_trip_and_an_unreadable_one_is_a_miss(tmp_path, caplog):
    cache = Cache(tmp_path)
    assert cache.load_tensors("kind", "k") is None and cache.load_json("kind", "k") is None
    cache.save_tensors("kind", "k", {"x": torch.arange(3.0)})
    cache.save_json("kind", "k", {"n": 3})
    assert torch.equal(cache.load_tensors("kind", "k")["x"], torch.arange(3.0))
    assert cache.load_json("kind", "k") == {"n": 3}
    assert sorted(p.name for p in cache.entry("kind", "k").iterdir()) == ["data.json", "tensors.safetensors"]
    (cache.entry("kind", "k") / "tensors.safetensors").write_bytes(b"\x00garbage")
    (cache.entry("kind", "k") / "data.json").write_text("{not json")
    assert cache.load_tensors("kind", "k") is None and cache.load_json("kind", "k") is None
    assert "unreadable cache file" in caplog.text
