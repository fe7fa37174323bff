"""Recipes: matched by the model's config (never its name), applied over the neutral defaults."""

import json
from types import SimpleNamespace

import pytest

from tiny_models import build_model, build_tokenizer
from unierase.edit.config import EditConfig
from unierase.edit.recipes import apply_recipe, edit_config_for, load_recipes, recipe_for
from unierase.storage import UniEraseError

@pytest.fixture(autouse=True)
def _no_calibrated_recipes(isolated_cache):
    """The user's own calibrated recipes (``<cache>/recipes``) must not change what these tests see."""


SMOLLM2_135M = SimpleNamespace(model_type="llama", num_hidden_layers=30, hidden_size=576, intermediate_size=1536,
                               _name_or_path="some/renamed-checkpoint")


def test_the_smollm2_recipe_applies_to_smollm2_135m_by_its_config_not_its_name():
    recipe = recipe_for(SMOLLM2_135M)
    assert recipe is not None and recipe.name == "smollm2-135m"
    config, used = edit_config_for(SMOLLM2_135M)
    assert used == recipe
    assert (config.ridge, config.stats_tokens, config.values.lr, config.entity_values.lr) == (0.2, 50_000, 0.5, 1.0)
    # every field the recipe sets is explained in it
    assert set(recipe.edit) <= set(recipe.why)
    # a model named like SmolLM2 but of another shape gets the neutral defaults
    other = SimpleNamespace(**{**vars(SMOLLM2_135M), "num_hidden_layers": 24, "_name_or_path": "HuggingFaceTB/SmolLM2-135M"})
    assert recipe_for(other) is None
    assert edit_config_for(other) == (EditConfig(), None)


def test_a_tiny_model_gets_the_neutral_defaults_and_overrides_win():
    model = build_model("llama", len(build_tokenizer()) + 1)
    config, recipe = edit_config_for(model.config, max_passes=3, solver=None)
    assert recipe is None and config == EditConfig(max_passes=3)
    config, _ = edit_config_for(SMOLLM2_135M, ridge=0.5)
    assert config.ridge == 0.5 and config.stats_tokens == 50_000


def test_every_shipped_recipe_is_valid_and_distinct():
    recipes = load_recipes()
    assert recipes and len({json.dumps(r.match, sort_keys=True) for r in recipes}) == len(recipes)
    for r in recipes:
        apply_recipe(r, {})  # a valid EditConfig


@pytest.mark.parametrize("text,message", [
    ('{"name": "x", "match": {"model_type": "llama"}, "edit": {"ridge": -1}}', "ridge must be ≥ 0"),
    ('{"name": "x", "match": {"model_type": "llama"}, "edit": {"rdge": 1}}', "rdge"),
    ('{"name": "x", "match": {}, "edit": {}}', "'match'"),
    ('{"name": "x", "match": {"model_type": "llama"}}', "'edit'"),
    ('{"name": "x",\n "match": {', "line 2"),
])
def test_a_bad_recipe_names_the_file_and_the_field(tmp_path, text, message):
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(UniEraseError) as err:
        load_recipes(tmp_path)
    assert "bad.json" in str(err.value) and message in str(err.value)


def test_two_recipes_matching_one_model_is_an_error(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"name": name, "match": {"model_type": "llama"}, "edit": {}}))
    with pytest.raises(UniEraseError, match="several recipes"):
        recipe_for(SMOLLM2_135M, load_recipes(tmp_path))


def test_settings_parse_from_the_cli_form_and_apply_over_a_config():
    from unierase.edit.recipes import parse_settings, with_settings

    settings = parse_settings(["values.greedy_continuation=true", "edit.answer_key_weight=4", "values.continuation_tokens=null",
                               'edit.key_position="entity"', "refit.epochs=0"])
    assert settings == {"edit": {"answer_key_weight": 4, "key_position": "entity"},
                        "values": {"greedy_continuation": True, "continuation_tokens": None}, "entity_values": {},
                        "refit": {"epochs": 0}, "token": {}}
    base, _ = edit_config_for(SMOLLM2_135M)
    config = with_settings(base, settings)
    assert config.values.greedy_continuation and config.values.continuation_tokens is None and config.values.lr == 0.5
    assert config.refit.epochs == 0 and base.refit.epochs == 1
    assert config.answer_key_weight == 4 and base.answer_key_weight == 2.0  # the original is untouched
    for bad, message in (("values.steps", "SECTION.FIELD=VALUE"), ("model.lr=1", "SECTION.FIELD=VALUE"),
                         ("values.steps=three", "JSON")):
        with pytest.raises(UniEraseError, match=message):
            parse_settings([bad])
    with pytest.raises(UniEraseError, match="stepz"):
        with_settings(base, {"values": {"stepz": 3}})
    with pytest.raises(UniEraseError, match="steps must be at least 1"):
        with_settings(base, {"values": {"steps": 0}})
    with pytest.raises(UniEraseError, match="step must be > 0"):
        with_settings(base, {"refit": {"step": 0}})


def test_token_settings_apply_to_the_token_config_only():
    from unierase.edit.recipes import parse_settings, token_with_settings, with_settings
    from unierase.token.training import UnlearningTokenConfig

    settings = parse_settings(["token.ordinary_answer_tokens=64", "edit.answer_key_weight=4"])
    token = token_with_settings(UnlearningTokenConfig(), settings)
    assert token.ordinary_answer_tokens == 64 and UnlearningTokenConfig().ordinary_answer_tokens == 32
    base, _ = edit_config_for(SMOLLM2_135M)
    assert with_settings(base, settings).answer_key_weight == 4  # the token section leaves the edit alone
    with pytest.raises(UniEraseError, match="ordinary_answer_tokenz"):
        token_with_settings(UnlearningTokenConfig(), {"token": {"ordinary_answer_tokenz": 3}})


def test_a_calibrated_recipe_in_the_cache_wins_over_the_packaged_one(isolated_cache, caplog):
    folder = isolated_cache / "recipes"
    folder.mkdir(parents=True)
    (folder / "mine.json").write_text(json.dumps({
        "name": "calibrated-llama-30x576", "match": {"model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576},
        "edit": {"ridge": 0.3}, "why": {"ridge": "measured"}, "calibration": {"trials": []}}), encoding="utf-8")
    with caplog.at_level("WARNING", logger="unierase.edit.recipes"):
        config, used = edit_config_for(SMOLLM2_135M)
    assert used.name == "calibrated-llama-30x576" and used.source == str(folder / "mine.json")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "calibrated-llama-30x576" in warned[0] and "packaged recipe smollm2-135m" in warned[0]
    assert config.ridge == 0.3 and config.stats_tokens == EditConfig().stats_tokens  # nothing of the packaged one
    other_cache = isolated_cache.parent / "elsewhere"
    assert recipe_for(SMOLLM2_135M, cache_dir=other_cache).name == "smollm2-135m"


def test_a_calibrated_recipe_for_a_model_no_package_knows_is_used_without_a_warning(isolated_cache, caplog):
    folder = isolated_cache / "recipes"
    folder.mkdir(parents=True)
    (folder / "gemma.json").write_text(json.dumps({
        "name": "calibrated-gemma3_text-18x640", "match": {"model_type": "gemma3_text", "num_hidden_layers": 18},
        "edit": {"ridge": 0.3}}), encoding="utf-8")
    gemma = SimpleNamespace(model_type="gemma3_text", num_hidden_layers=18, hidden_size=640)
    with caplog.at_level("WARNING", logger="unierase.edit.recipes"):
        config, used = edit_config_for(gemma)
    assert used.name == "calibrated-gemma3_text-18x640" and config.ridge == 0.3
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
