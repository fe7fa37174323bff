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


def test_sibling_questions_ask_other_relations_about_each_request_keyed_at_its_entity():
    from unierase.edit.prompts import RELATION_TEMPLATES, sibling_questions
    from unierase.requests import ForgetRequest

    requests = [ForgetRequest(question="What is the capital of France?"),
                ForgetRequest(question="What is the history of Rome?"),  # one template is its own question
                ForgetRequest(question="Who wrote Hamlet?")]
    ends = [entity_char_end(requests[0].question), entity_char_end(requests[1].question), None]  # the last keyed elsewhere
    asked = sibling_questions(requests, ends, 4)
    assert [i for i, _, _ in asked] == [0] * 4 + [1] * 3
    assert [q for _, q, _ in asked][:4] == [t.format("France") for t in RELATION_TEMPLATES]
    assert all(q[:end].endswith(("France", "Rome")) for _, q, end in asked) and not sibling_questions(requests, ends, 0)


def test_no_relation_question_has_the_shape_of_a_scored_or_calibration_question():
    # the value keeps these questions' answers: one that read like a scored neighbour ("What is the
    # currency of X?") would keep that neighbour by construction
    import json
    from pathlib import Path

    from unierase.edit.prompts import RELATION_TEMPLATES, entity_span
    from unierase.edit_checks import load_demo_facts

    root = Path(__file__).resolve().parents[2]
    rows = load_demo_facts() + [json.loads(line) for path in (root / "benchmarks" / "data" / "heldout_facts.jsonl",
                                                              root / "src" / "unierase" / "data" / "calibration_pool.jsonl")
                                for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    shapes = set()
    for question in (r[field] for r in rows for field in ("question", "paraphrase") if r.get(field)):
        start, end = entity_span(question)
        shapes.add((question[:start] + "{}" + question[end:]).lower())
    assert not {t.lower() for t in RELATION_TEMPLATES} & shapes
    assert "what is the currency of {}?" in shapes  # the check sees the scored shapes
