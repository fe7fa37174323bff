"""Request scopes: which requests form an entity group, their shared key and target, validation."""

import hashlib
import json

import pytest

from unierase.edit.scope import name_spans, resolve_scope, shared_entities
from unierase.requests import ForgetRequest, load_requests, parse_requests
from unierase.storage import UniEraseError

TOFU_LIKE = [
    "What is the full name of the author born in Kuwait City, Kuwait on 08/09/1956?",
    "What gender is author Basil Mahfouz Al-Kuwaiti?",
    "Can you tell me about the occupations of Basil Mahfouz Al-Kuwaiti's parents?",
    "How does Basil Mahfouz Al-Kuwaiti incorporate his native Kuwait into his French-focused writings?",
    "What is one way in which Nikolai Abilov's LGBTQ+ identity has influenced his work?",
    "What specific genre is Nikolai Abilov known for?",
]


def test_name_spans_stop_at_possessives_and_skip_a_lone_first_word():
    assert name_spans("What is one way in which Nikolai Abilov's LGBTQ+ identity has influenced his work?") == [
        "Nikolai Abilov", "LGBTQ"]
    assert name_spans("Can you name Basil Mahfouz Al-Kuwaiti's books?") == ["Basil Mahfouz Al-Kuwaiti"]
    assert name_spans("Marie Curie won what?") == ["Marie Curie"]


def test_shared_entities_group_by_the_name_several_requests_choose():
    found = shared_entities([ForgetRequest(q) for q in TOFU_LIKE])
    # the first question names a country in passing ("Kuwait" is not inside "Al-Kuwaiti"): no group
    assert found == [None, "Basil Mahfouz Al-Kuwaiti", "Basil Mahfouz Al-Kuwaiti", "Basil Mahfouz Al-Kuwaiti",
                     "Nikolai Abilov", "Nikolai Abilov"]


def test_auto_scope_keeps_unrelated_single_facts_as_facts():
    scoped = resolve_scope([ForgetRequest(q) for q in ["What is the capital of France?", "Who wrote Hamlet?"]])
    assert scoped.scopes == ["fact", "fact"] and scoped.entities == [] and scoped.groups == [0, 1]
    assert scoped.requests == [ForgetRequest("What is the capital of France?"), ForgetRequest("Who wrote Hamlet?")]


def test_entity_groups_share_one_target_and_add_neutral_questions():
    scoped = resolve_scope([ForgetRequest(q) for q in TOFU_LIKE], neutral_questions=2)
    assert scoped.scopes == ["fact"] + ["entity"] * 5
    assert [e["entity"] for e in scoped.entities] == ["Basil Mahfouz Al-Kuwaiti", "Nikolai Abilov"]
    assert scoped.entities[0]["requests"] == [1, 2, 3]
    # one target per entity group, each fact its own; the added questions join their entity's group
    assert scoped.groups[:6] == [0, 1, 1, 1, 2, 2]
    assert [r.question for r in scoped.added] == [
        "Tell me about Basil Mahfouz Al-Kuwaiti.", "What do you know about Basil Mahfouz Al-Kuwaiti?",
        "Tell me about Nikolai Abilov.", "What do you know about Nikolai Abilov?"]
    assert scoped.groups[6:] == [1, 1, 2, 2]
    # every member is keyed at the entity found once: it becomes the request's subject
    assert all(r.subject == "Basil Mahfouz Al-Kuwaiti" for r in scoped.requests[1:4])
    assert scoped.requests[0].subject is None
    assert [scoped.is_entity(i) for i in range(len(scoped.requests))] == [False] + [True] * 9


def test_a_person_group_also_gets_questions_about_a_person_and_another_entity_does_not():
    scoped = resolve_scope([ForgetRequest(q) for q in TOFU_LIKE[4:]] + [
        ForgetRequest("What is the capital of Japan?", subject="Japan", scope="entity")],
        neutral_questions=1, person_questions=2)
    person, place = scoped.entities
    assert person["person"] and not place["person"]
    assert person["added"] == ["Tell me about Nikolai Abilov.", "Who is Nikolai Abilov?", "What is Nikolai Abilov known for?"]
    assert place["added"] == ["Tell me about Japan."]
    assert all(r.subject == "Nikolai Abilov" for r in scoped.added[:3])  # keyed at the name, as the group's own
    assert resolve_scope([ForgetRequest(q) for q in TOFU_LIKE[4:]], neutral_questions=1).entities[0]["added"] == [
        "Tell me about Nikolai Abilov."]  # none by default


def test_scope_field_and_round_default():
    reqs = [ForgetRequest("When was Marie Curie born?", scope="entity"), ForgetRequest("What is the capital of Peru?")]
    scoped = resolve_scope(reqs, neutral_questions=1)
    assert scoped.scopes == ["entity", "fact"] and scoped.entities[0]["entity"] == "Marie Curie"
    assert scoped.requests[0].subject == "Marie Curie"
    scoped = resolve_scope([ForgetRequest(q, scope="fact") for q in TOFU_LIKE[1:3]])
    assert scoped.scopes == ["fact", "fact"] and scoped.added == []
    scoped = resolve_scope([ForgetRequest(q) for q in TOFU_LIKE[1:3]], "fact")
    assert scoped.scopes == ["fact", "fact"]
    with pytest.raises(UniEraseError, match="unknown scope"):
        resolve_scope(reqs, "person")


def test_scope_is_validated_where_requests_are_read(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"question": "Who is X?"}) + "\n" + json.dumps({"question": "Who is Y?", "scope": "all"}) + "\n")
    with pytest.raises(UniEraseError, match=r"r.jsonl:2: field 'scope' is 'all'; choose from auto, fact, entity"):
        load_requests(path)
    with pytest.raises(UniEraseError, match="field 'scope' must be a string"):
        parse_requests([{"question": "Who is X?", "scope": 1}])
    assert parse_requests([{"question": "Who is X?", "scope": "entity"}])[0].scope == "entity"


def test_a_request_without_scope_hashes_as_before():
    # digests are recorded in manifests and ledgers written before scopes existed
    before = hashlib.sha256(json.dumps({"question": "Q?", "answer": "A", "subject": None}, sort_keys=True).encode()).hexdigest()
    assert ForgetRequest("Q?", "A").digest() == before
    assert ForgetRequest("Q?", "A").digest() != ForgetRequest("Q?", "A", scope="fact").digest()


def test_auto_scope_erases_a_person_not_a_country_named_twice():
    from unierase.edit.scope import looks_like_person

    assert looks_like_person("Basil Mahfouz Al-Kuwaiti") and looks_like_person("Marie Curie")
    assert not any(map(looks_like_person, ["Japan", "South Korea", "Romeo and Juliet", "gold"]))
    japan = resolve_scope([ForgetRequest("What is the capital of Japan?"), ForgetRequest("What is the currency of Japan?")])
    assert japan.scopes == ["fact", "fact"] and japan.entities == []
    # a place is erased as an entity only when a request names it as its subject
    named = resolve_scope([ForgetRequest("What is the capital of Japan?"), ForgetRequest("What is the currency of Japan?")],
                          "entity")
    assert named.entities == [] and named.scopes == ["fact", "fact"] and named.unattributed == [0, 1]
    subject = [ForgetRequest("What is the capital of Japan?", subject="Japan"),
               ForgetRequest("What is the currency of Japan?", subject="Japan")]
    assert resolve_scope(subject, "entity").entities[0]["entity"] == "Japan"


def test_a_surname_shared_with_a_misspelt_full_name_still_erases_the_person():
    # "Vasquez" is named by more requests than "Jaime Vasquez" (one misspells it): the group keys at
    # the surname, but the person's full name decides the scope and writes the neutral questions
    questions = ["Are the details of Jaime Vasquez's birth documented?", "Where does Jaime Vasquez live?",
                 "Is Jamie Vasquez's identity reflected in his works?", "Has Jaime Vasquez won awards?"]
    scoped = resolve_scope([ForgetRequest(q) for q in questions], neutral_questions=1)
    assert scoped.scopes == ["entity"] * 4
    assert scoped.entities[0]["entity"] == "Jaime Vasquez" and {r.subject for r in scoped.requests[:4]} == {"Vasquez"}
    assert [r.question for r in scoped.added] == ["Tell me about Jaime Vasquez."]


def test_a_place_named_by_several_requests_is_not_a_person():
    from unierase.edit.scope import full_name, looks_like_person

    assert not looks_like_person("New York City") and looks_like_person("Moshe Ben-David")
    # a question's first word is no part of a name ("Has Chukwu Akabueze …")
    assert full_name("Chukwu Akabueze", ["Has Chukwu Akabueze won awards?", "Where was Chukwu Akabueze born?"]) == \
        "Chukwu Akabueze"


def test_a_person_the_corpus_does_not_list_gets_people_as_substitutes():
    from unierase.edit.corpus import SUBSTITUTE_GROUPS
    from unierase.edit.prompts import substitute_entities

    picked = substitute_entities("Jaime Vasquez", set(), 4, "seed", person=True)
    assert len(picked) == 4 and set(picked) <= set(SUBSTITUTE_GROUPS["person"])
    # a fact's unlisted entity keeps drawing from all lists (the demo's "Harry Potter", "Taj Mahal")
    assert not set(substitute_entities("Taj Mahal", set(), 8, "seed")) <= set(SUBSTITUTE_GROUPS["person"])
    scoped = resolve_scope([ForgetRequest(q) for q in TOFU_LIKE] + [
        ForgetRequest("Where is Japan?", scope="entity", subject="Japan"),
        ForgetRequest("What is the capital of Japan?", scope="entity", subject="Japan")])
    assert [scoped.entity_kind(i) for i in (0, 1, 4, 6)] == [None, "person", "person", "entity"]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "mistral"])
def test_an_entity_scope_edit_reaches_the_entitys_unseen_question_and_not_another_entitys(arch):
    """On a tiny model, after an entity-scope edit of three questions about Marie Curie, an unseen
    question about her starts with the target token; the same about Isaac Newton does not.

    A random tiny model carries almost nothing from an earlier token to the answer position, so
    the prompt here is the bare question ending in the entity (its last token is the key and the
    answer position), the attention outputs are damped (keys at a token then depend mostly on the
    token itself, as an entity's keys do in a trained model), and the target token's output
    embedding is scaled so a bounded δ can make it the greedy choice."""
    import torch

    from tiny_models import build_model, build_tokenizer
    from unierase.edit.config import EditConfig
    from unierase.edit.editor import run_edit_passes
    from unierase.edit.preserved import PreservedKeys
    from unierase.record.edit_state import EditState
    from unierase.edit.stats import accumulate_key_moments
    from unierase.edit.values import ValueConfig
    from unierase.generation import generate_answer_ids
    from unierase.models.adapters import find_mlp_output
    from unierase.token.training import add_unlearning_token

    tok = build_tokenizer()
    tok.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    model = build_model(arch, len(tok) + 1)
    token_id = add_unlearning_token(model, tok)
    adapter = find_mlp_output(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("o_proj", "c_proj", "dense")) and "mlp" not in name:
                p.mul_(0.1)
        generator = torch.Generator().manual_seed(1)
        model.get_output_embeddings().weight[token_id] = 1.5 * torch.randn(32, generator=generator)
    stats = accumulate_key_moments(model, tok, adapter, [1, 2], num_tokens=3000, progress=False)
    questions = ["Who taught Marie Curie", "Where did you meet Marie Curie", "What did Marie Curie discover"]
    scoped = resolve_scope([ForgetRequest(q) for q in questions], "entity", neutral_questions=2)
    config = EditConfig(layers=[1, 2], null_space_threshold=0.05, ridge=0.01, max_passes=2, substitute_answer_tokens=0,
                        entity_values=ValueConfig(steps=30, lr=0.5, clamp_factor=4.0, continuation_weight=0.0))
    result = run_edit_passes(model, tok, adapter, scoped.requests, token_id, config,
                             PreservedKeys.from_statistics(stats, config.layers, config, EditState()), progress=False,
                             groups=scoped.groups, entity_scope=[scoped.entity_kind(i) for i in range(len(scoped.requests))])
    assert set(result.key_tokens) == {tok.decode(tok("Marie Curie")["input_ids"][-1:])}  # one key position for all
    probes = ["Tell me more about Marie Curie", "Tell me more about Isaac Newton", "Who taught Isaac Newton"]
    firsts = [ids[0] for ids in generate_answer_ids(model, tok, probes, max_new_tokens=1)]
    assert [f == token_id for f in firsts] == [True, False, False]


def test_a_groups_delta_is_optimised_on_questions_spread_over_its_lengths():
    from unierase.edit.editor import _steering

    requests = [ForgetRequest("Q" + "x" * n + "?") for n in (5, 1, 9, 3, 7, 2)] + [ForgetRequest("Alone?")]
    chosen = _steering(requests, [0, 0, 0, 0, 0, 0, 1], 3)
    # lengths ordered 1, 2, 3, 5, 7, 9: the shortest (1), a middle one (3) and the longest (9); a lone
    # request steers itself
    assert chosen == [False, True, True, True, False, False, True]
    assert _steering(requests, [0] * 6 + [1], None) is None


def test_fact_targets_and_shared_entity_targets_are_optimised_with_their_own_settings(monkeypatch):
    import torch

    from unierase.edit import editor
    from unierase.edit.config import EditConfig
    from unierase.edit.editor import _target_values
    from unierase.edit.prompts import EditPrompt
    from unierase.edit.values import ValueConfig, ValueReport

    calls = []

    def fake(model, adapter, z_layer, prompts, num_requests, target_id, pad, config, progress, **kw):
        calls.append((config, [p.request_index for p in prompts], kw["groups"], kw["optimise"]))
        z = torch.full((2, num_requests), float(len(calls)))
        report = ValueReport(
            steps=len(calls), initial_nll=[1.0] * num_requests, final_nll=[float(len(calls))] * num_requests,
            final_continuation_nll=[0.0] * num_requests, delta_norm_ratio=[0.1] * num_requests,
            steps_per_request=[1] * num_requests, converged=[True] * num_requests)
        return z, z, report

    monkeypatch.setattr(editor, "compute_target_values", fake)
    config = EditConfig(values=ValueConfig(lr=0.1), entity_values=ValueConfig(lr=2.0))
    prompts = [EditPrompt(r, 0, [1, 2, 3], 1, (0, 3)) for r in range(4)]
    # requests 0 and 2 about one entity (group 1), 1 and 3 single facts
    z, report = _target_values(None, None, 0, prompts, 4, 9, 0, config, False, continuations=None, start_targets=None,
                               plain_group=None, keep_targets=None, groups=[1, 0, 1, 2], optimise=[True, True, False, True])
    assert [c[0].lr for c in calls] == [0.1, 2.0]
    assert calls[0][1:] == ([0, 1], [0, 1], [True, True]) and calls[1][1:] == ([0, 1], [0, 0], [True, False])
    assert z[0].tolist() == [2.0, 1.0, 2.0, 1.0] and report["final_nll"] == [2.0, 1.0, 2.0, 1.0] and report["steps"] == 2



def test_entity_scope_leaves_dates_and_places_named_in_passing():
    """The TOFU case: two questions describe an author without naming them; their month and country
    are no entities, and the model's own answer (or the request's answer) attributes them."""
    from unierase.edit.scope import is_common_entity, nameable

    assert is_common_entity("February") and is_common_entity("Kuwait City") and is_common_entity("Paris")
    assert nameable("Basil Mahfouz Al-Kuwaiti") and not nameable("Kuwait") and not nameable("February")
    questions = ["What genre is Basil Mahfouz Al-Kuwaiti known for?", "Where was Basil Mahfouz Al-Kuwaiti born?",
                 "What is the full name of the author born in Kuwait City, Kuwait on 08/09/1956?",
                 "Who is the author born in Astana, Kazakhstan on the 7th of February, 1952?"]
    plain = resolve_scope([ForgetRequest(q) for q in questions], "entity", neutral_questions=1)
    assert plain.unattributed == [2, 3] and plain.scopes == ["entity", "entity", "fact", "fact"]
    assert [e["entity"] for e in plain.entities] == ["Basil Mahfouz Al-Kuwaiti"]
    assert [r.question for r in plain.added] == ["Tell me about Basil Mahfouz Al-Kuwaiti."]
    evidence = {2: "The author born in Kuwait City is Basil Mahfouz Al-Kuwaiti.", 3: "She is Nikolai Abilov's mentor."}
    attributed = resolve_scope([ForgetRequest(q) for q in questions], "entity", neutral_questions=1, evidence=evidence)
    assert attributed.unattributed == [3] and attributed.scopes == ["entity", "entity", "entity", "fact"]
    assert attributed.entities[0]["attributed"] == [2] and 2 in attributed.entities[0]["requests"]
    assert attributed.members[2] == attributed.members[0] and attributed.described(2) and not attributed.described(0)
    # a target of its own (the group's, keyed at the name, is not reached from the question's end)
    assert attributed.groups[2] not in (attributed.groups[0], attributed.groups[3])
    assert attributed.requests[2].subject is None  # keyed at the question's end, not at "Kuwait"
    # the request's own answer is evidence too
    given = [ForgetRequest(q) for q in questions[:3]] + [ForgetRequest(questions[3], answer="Al-Kuwaiti's sister")]
    assert resolve_scope(given, "entity").unattributed == [2]
