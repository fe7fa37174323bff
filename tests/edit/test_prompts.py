from unierase.edit.prompts import CONTEXT_SUFFIXES, build_edit_prompts, entity_char_end


def test_suffixed_variants_keep_the_key_token_and_end_after_the_suffix():
    from tiny_models import build_tokenizer
    from unierase.audit import REWORDING_FRAMES

    tok = build_tokenizer()
    question = "What is the capital of France?"
    prompts = build_edit_prompts(tok, question, 0, entity_char_end(question), num_prefixes=1, num_suffixes=2)
    assert [p.variant for p in prompts] == [0, 1, 2, 3]
    plain, _, *suffixed = prompts
    for p, suffix in zip(suffixed, CONTEXT_SUFFIXES):
        # the same tokens up to the key (a causal model's key there is the plain prompt's key)
        assert p.input_ids[: p.key_index + 1] == plain.input_ids[: plain.key_index + 1]
        assert tok.decode(p.input_ids[p.key_index]).strip() == "France"
        assert suffix.strip() in tok.decode(p.input_ids[p.question_span[1]:]) and len(p.input_ids) > len(plain.input_ids)
    # the edit's own frames are never the audit's rewordings
    assert not {s.strip() for s in CONTEXT_SUFFIXES} & {f.replace("{q}", "").strip() for f in REWORDING_FRAMES}


def test_edit_prompts_in_the_plain_format_are_the_prompts_that_are_answered():
    """A model without a chat template answers ``BOS Question: … Answer:``; the edit's keys and
    values must be read on exactly those tokens (without the BOS, Gemma's states are other states)."""
    from tiny_models import build_plain_tokenizer
    from unierase.prompts import encode_text, has_chat_template, render_prompt

    tok = build_plain_tokenizer()
    question = "What is the capital of France?"
    answered = encode_text(tok, render_prompt(tok, question))
    assert not has_chat_template(tok) and answered[0] == tok.bos_token_id
    plain = build_edit_prompts(tok, question, 0, entity_char_end(question), num_prefixes=1)[0]
    assert plain.input_ids == answered
    assert tok.decode(plain.input_ids[plain.key_index]).strip() == "France"
    assert tok.decode(plain.input_ids[plain.question_span[0]:plain.question_span[1]]).strip() == question
