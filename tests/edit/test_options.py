"""edit/options.py: UniErase's options, validated before any work and never silently dropped."""

import pytest

from unierase.edit.config import EditConfig
from unierase.edit.erase import _resolve_config
from unierase.edit.options import EraseOptions, parse_layers
from unierase.registry import get_method
from unierase.storage import UniEraseError


def test_round_options_apply_over_a_callers_edit_config(tiny_llama):
    model, _ = tiny_llama
    options = EraseOptions(edit_config=EditConfig(num_prefixes=1), key_position="question_end", solver="memit",
                           max_passes=3)
    config, recipe = _resolve_config(model, options)
    assert (config.key_position, config.solver, config.max_passes, config.num_prefixes) == ("question_end", "memit", 3, 1)
    assert recipe is None
    # unset options leave the caller's config (and the recipe's defaults) as they are
    config, _ = _resolve_config(model, EraseOptions(edit_config=EditConfig(key_position="last")))
    assert config.key_position == "last" and config.solver == "alphaedit"


@pytest.mark.parametrize("fields, message", [
    ({"scope": "person"}, "unknown scope"),
    ({"mode": "fast"}, "unknown mode"),
    ({"key_position": "middle"}, "unknown key position"),
    ({"solver": "rome"}, "unknown solver"),
    ({"mode": "precise"}, "precise mode edits exactly one request"),
    ({"stats_tokens": 10}, "stats_tokens must be at least"),
    ({"max_passes": 0}, "max_passes must be at least 1"),
])
def test_bad_options_are_one_line_errors(fields, message):
    with pytest.raises(UniEraseError, match=message):
        EraseOptions(**fields).validate(2, "r.jsonl")


def test_an_option_the_method_does_not_have_is_refused():
    with pytest.raises(UniEraseError, match="do not apply to method 'unierase'"):
        get_method("unierase").make_options({"lr": 1e-5})
    with pytest.raises(UniEraseError, match="do not apply to method 'npo\\+gd'"):
        get_method("npo_gd").make_options({"scope": "entity"})


def test_parse_layers():
    assert parse_layers("4,5,6") == [4, 5, 6] and parse_layers(None) is None
    for bad in ("a,b", "1,1", "-1"):
        with pytest.raises(UniEraseError):
            parse_layers(bad)


def test_a_chosen_refusal_is_checked_before_any_work(tmp_path):
    import unierase

    reqs = [{"question": "What is the capital of France?", "answer": "Paris"}]
    for bad, message in [("", "one non-empty line"), ("two\nlines", "one non-empty line"),
                         ("I won't say Paris.", "contains the answer 'Paris'")]:
        with pytest.raises(UniEraseError, match=message):  # the model does not exist: the error comes first
            unierase.forget(reqs, tmp_path / "out", model=tmp_path / "nothing-here-either", refusal=bad)
