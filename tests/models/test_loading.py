def test_the_gguf_conversion_parses_the_file_once_and_restores_the_reader(monkeypatch):
    import gguf

    from unierase.models import loading

    made = []

    class CountingReader:
        def __init__(self, path, *args, **kwargs):
            made.append(path)

    monkeypatch.setattr(gguf, "GGUFReader", CountingReader)
    with loading._one_gguf_parse():
        from gguf import GGUFReader  # what transformers does at each call

        first, second, other = GGUFReader("a.gguf"), GGUFReader("a.gguf"), GGUFReader("b.gguf")
    assert first is second and first is not other
    assert made == ["a.gguf", "b.gguf"]
    assert gguf.GGUFReader is CountingReader
