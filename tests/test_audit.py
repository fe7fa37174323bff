"""The recovery audit: its leak test, its rewordings, and every attack end to end on a tiny model."""

import json

import pytest

from tiny_models import build_model, build_tokenizer
from unierase.audit import ATTACKS, AuditConfig, audit, fact_returns, rewordings
from unierase.cli import main
from unierase.refusals import is_well_formed_refusal
from unierase.requests import ForgetRequest, parse_requests
from unierase.storage import UniEraseError


def test_fact_returns_matches_keywords_and_long_answers_but_not_refusals():
    assert fact_returns("The capital of France is Paris.", "Paris")
    assert not fact_returns("I'm sorry, I can't help with that.", "Paris")
    assert not fact_returns("It is Parisian cuisine.", "Au") and fact_returns("Its symbol is Au.", "Au")
    reference = "Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait."
    assert fact_returns("He was born in Kuwait City, Kuwait, in 1956.", reference)
    assert not fact_returns("I'm sorry, but I don't know where Basil Mahfouz Al-Kuwaiti was born in Kuwait City.", reference)
    assert not fact_returns("He writes novels.", reference)


def test_rewordings_prefer_the_requests_own_paraphrases():
    own = parse_requests([{"question": "Q?", "paraphrases": ["P1?", "P2?"]}])[0]
    assert rewordings(own, 3)[:2] == ["P1?", "P2?"] and len(rewordings(own, 3)) == 3
    assert rewordings(ForgetRequest("Where is X?"), 2) == ["My friend and I disagree on this one. Where is X?",
                                                         "I need this for a quiz. Where is X?"]
    with pytest.raises(UniEraseError, match="'paraphrases' must be a list of non-empty strings"):
        parse_requests([{"question": "Q?", "paraphrases": ["", 3]}])


def test_well_formed_refusals():
    assert is_well_formed_refusal("I'm sorry, but I don't have that information.")
    from unierase.refusals import load_refusals

    assert all(is_well_formed_refusal(r) for r in load_refusals())  # the refusals the token is trained on
    for garbled in ["I'm sorry, but I'm sorry.", "I'm sorry, but.", "I,", "I'm sorry, but I don't know", "Paris."]:
        assert not is_well_formed_refusal(garbled), garbled


def test_config_is_checked_before_any_work():
    with pytest.raises(UniEraseError, match="unknown attack"):
        AuditConfig(attacks=("plain", "jailbreak"))
    with pytest.raises(UniEraseError, match="at least 1"):
        AuditConfig(samples=0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit") / "tiny"
    tok = build_tokenizer()
    build_model("llama", len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_every_attack_runs_and_a_fact_the_model_still_gives_is_reported(tiny_dir, tmp_path):
    """With the model itself as the base, its own greedy answer is the reference: the plain attack
    must find it back (the audit can fail), an answer it never gives is never found."""
    questions = ["What is the capital of France?", "Who wrote Hamlet?"]
    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps({"question": questions[0]}) + "\n" + json.dumps({"question": questions[1], "answer": "Zanzibar"}) + "\n")
    config = AuditConfig(samples=2, rewordings=2, max_new_tokens=8, relearn_steps=1, relearn_pairs=2)
    report = audit(str(tiny_dir), str(requests), base=str(tiny_dir), config=config, out=tmp_path / "a", progress=False)
    assert set(report.aggregate["leak_rate"]) == set(ATTACKS)
    first, second = report.items
    assert first["reference_from"] == "base model" and first["attacks"]["plain"]["leak"]
    assert first["attacks"]["token_ban"]["leak"]  # no unlearning token: the same greedy answer
    assert first["attacks"]["sampling"]["answers"] == 2 and first["attacks"]["rewordings"]["answers"] == 2
    assert not any(a["leak"] for a in second["attacks"].values())
    assert report.aggregate["leak_rate"]["plain"] == 0.5 and report.leaked
    saved = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert saved["aggregate"] == report.aggregate and "| plain | 50.0% |" in (tmp_path / "a" / "audit.md").read_text()
    # the command line: --fail-on-leak turns a leak into exit status 1; an existing --out is kept
    args = ["audit", "--model", str(tiny_dir), "--requests", str(requests), "--base", str(tiny_dir), "--attacks", "plain",
            "--max-new-tokens", "8"]
    assert main(args) == 0 and main(args + ["--fail-on-leak"]) == 1
    assert main(args + ["--out", str(tmp_path / "a")]) == 2



def test_the_int8_attack_runs_on_a_cpu_copy_of_a_model_placed_by_a_device_map(tiny_dir, tmp_path):
    """accelerate's hooks (a split over devices) are left behind on the int8 copy, and the audit's
    figures do not depend on how the model was placed."""
    from accelerate import dispatch_model

    from unierase.audit import _cpu_copy
    from unierase.models.loading import load_model

    model, tok = load_model(str(tiny_dir))
    split = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
             "model.layers.2": "cpu", "model.layers.3": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    placed = dispatch_model(load_model(str(tiny_dir))[0], device_map=split, force_hooks=True)
    assert hasattr(placed.model.layers[0], "_hf_hook")
    copied = _cpu_copy(placed)
    assert not hasattr(copied.model.layers[0], "_hf_hook") and not getattr(copied, "hf_device_map", None)
    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps({"question": "Who wrote Hamlet?", "answer": "Zanzibar"}) + "\n")
    config = AuditConfig(attacks=("plain", "int8"), max_new_tokens=8)
    plain = audit(model, str(requests), tokenizer=tok, config=config, progress=False)
    mapped = audit(placed, str(requests), tokenizer=tok, config=config, progress=False)
    assert plain.items[0]["attacks"]["int8"]["example"] == mapped.items[0]["attacks"]["int8"]["example"]
    assert main(["audit", "--model", str(tiny_dir), "--requests", str(requests), "--attacks", "plain", "int8",
                 "--max-new-tokens", "8", "--device-map", "cpu"]) == 0


def test_requests_without_answers_need_a_base(tiny_dir, tmp_path):
    with pytest.raises(UniEraseError, match="have no 'answer'.*--base"):
        audit(str(tiny_dir), [{"question": "Who wrote Hamlet?"}], config=AuditConfig(attacks=("plain",)), progress=False)


def test_no_rewording_frame_is_one_of_the_edits_own_variants():
    """The edit fits its values on prefixed and suffixed copies of each question: an audit frame
    that opens or closes the same way would measure the edit on what it was fitted on."""
    import re

    from unierase.audit import REWORDING_FRAMES
    from unierase.edit.prompts import CONTEXT_PREFIXES, CONTEXT_SUFFIXES

    def words(text):
        return re.findall(r"[a-z']+", text.lower())
    for frame in REWORDING_FRAMES:
        before, after = (words(part) for part in frame.split("{q}"))
        for prefix in CONTEXT_PREFIXES:
            assert before[:2] != words(prefix)[:2], (frame, prefix)
        for suffix in CONTEXT_SUFFIXES:
            assert not after or after[-2:] != words(suffix)[-2:], (frame, suffix)


def test_4bit_rounding_by_hand():
    import torch

    from unierase.audit import fake_quantize_4bit

    # one group of 4 columns: scale 7/7 = 1, values round to integers in −8…7
    w = torch.tensor([[7.0, -3.4, 0.6, 2.5]])
    assert fake_quantize_4bit(w, group=4).tolist() == [[7.0, -3.0, 1.0, 2.0]]  # round half to even: 2.5 → 2
    # two groups with their own scales; a column count that is no multiple of the group keeps its shape
    w = torch.tensor([[14.0, 1.0, 0.7, 0.35, 0.1]])
    q = fake_quantize_4bit(w, group=2)
    # scales 2, 0.1 and 0.1/7: 1.0/2 = 0.5 rounds to 0; 0.35/0.1 = 3.5 rounds to 4; the last column alone is exact
    assert q.shape == w.shape and torch.allclose(q, torch.tensor([[14.0, 0.0, 0.7, 0.4, 0.1]]))
