"""calibrate on a tiny model: a recipe is written into the cache, forget then uses it (log and
manifest say so), and a second run resumes from the cached trials."""

import json
import re

import pytest

from tiny_models import build_model, build_tokenizer
from unierase import api
from unierase.calibrate import CalibrationConfig, calibrate
from unierase.calibrate.pool import load_pool
from unierase.generation import generate_answers
from unierase.storage import UniEraseError

TINY = CalibrationConfig(forget=4, neighbours=8, trace_samples=1, stages=["step"],
                         fixed={"stats_tokens": 2000, "max_passes": 1})


def own_pool(model, tok) -> list[dict]:
    """Pool questions with the tiny model's own first word as their answer: facts it "knows"."""
    rows = load_pool()[:40]
    answers = generate_answers(model, tok, [r["question"] for r in rows], max_new_tokens=24)
    out = []
    for row, answer in zip(rows, answers):
        word = re.search(r"[A-Za-z]{3,}", answer)
        if word:
            out.append(dict(row, answer=word.group(0)))
    return out


def test_calibrate_writes_a_recipe_that_forget_then_uses_and_resumes_from_its_cache(tmp_path, monkeypatch, caplog):
    import logging

    cache = tmp_path / "cache"
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    pool = own_pool(model, tok)
    assert len(pool) >= 12

    result = calibrate(tmp_path / "base", cache_dir=cache, config=TINY, pool=pool, progress=False)
    recipe = json.loads(result.path.read_text(encoding="utf-8"))
    assert result.path.parent == cache / "recipes" and recipe["name"].startswith("calibrated-llama-")
    trials = recipe["calibration"]["trials"]
    assert [t["stage"] for t in trials] == ["neutral defaults", "step"]
    assert recipe["edit"] == trials[recipe["calibration"]["chosen"]]["edit"]
    assert recipe["edit"]["stats_tokens"] == 2000 and set(recipe["edit"]) <= set(recipe["why"])
    assert {"forget", "known_still_correct", "teacher_forced_agreement", "rewordings", "token_ban",
            "well_formed_refusals", "seconds_per_request"} <= set(trials[0]["figures"])

    # forget finds it for this model and says so in its log and manifest
    (tmp_path / "r.jsonl").write_text(json.dumps({"question": "Who wrote Hamlet?"}) + "\n")
    with caplog.at_level(logging.INFO, logger="unierase"):
        done = api.forget(tmp_path / "r.jsonl", tmp_path / "out", model=tmp_path / "base", cache_dir=cache, progress=False)
    last = done.manifest["rounds"][-1]
    assert last["recipe"] == recipe["name"] and last["recipe_source"] == str(result.path)
    assert f"recipe {recipe['name']}" in caplog.text

    # an existing recipe is kept unless overwrite; a second run measures nothing again
    with pytest.raises(UniEraseError, match="exists"):
        calibrate(tmp_path / "base", cache_dir=cache, config=TINY, pool=pool, progress=False)
    import unierase.demo

    def fail(*args, **kwargs):
        raise AssertionError("a cached trial was measured again")

    monkeypatch.setattr(unierase.demo, "erase_and_measure", fail)
    again = calibrate(tmp_path / "base", cache_dir=cache, config=TINY, pool=pool, progress=False, overwrite=True)
    assert again.recipe["edit"] == recipe["edit"] and again.recipe["calibration"]["trials"] == trials


def test_a_model_that_knows_too_few_pool_facts_is_refused_with_the_count(tmp_path):
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    with pytest.raises(UniEraseError, match=r"answers only 0 of the calibration pool's \d+ questions"):
        calibrate(model, tokenizer=tok, cache_dir=tmp_path, config=TINY, progress=False)


def test_the_command_line_defaults_are_the_configs():
    from unierase.cli import build_parser

    args = build_parser().parse_args(["calibrate"])
    assert (args.forget, args.neighbours) == (CalibrationConfig().forget, CalibrationConfig().neighbours)


def test_the_split_a_trial_erases_is_refused_as_calibrate_refuses_it(tmp_path):
    from unierase.calibrate.run import calibration_split

    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    with pytest.raises(UniEraseError, match=r"answers only 0 of the calibration pool's \d+ questions"):
        calibration_split(model, tok, cache_dir=tmp_path, config=TINY)
