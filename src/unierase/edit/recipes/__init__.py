"""Per-model edit settings: a recipe file per model, matched by the model's config.

The library's defaults (``EditConfig``) are neutral: the official method's values where it has
one, equal weights and the safer budget elsewhere. What was measured on one model lives in a JSON
file here — ``match`` (config fields the model must have: architecture, depth, width), ``edit``
(``EditConfig`` fields, ``values``/``entity_values``/``refit`` as nested objects), ``why``
(one line per field) — and applies to every model whose config matches, never by its name.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ...storage import UniEraseError
from ..options import SETTING_SECTIONS, parse_settings  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    name: str
    match: dict
    """Config fields (``model.config``) and the values a model must have for the recipe to apply."""
    edit: dict
    """``EditConfig`` fields that differ from the neutral defaults."""
    description: str = ""
    why: dict = field(default_factory=dict)
    source: str = ""
    calibration: dict = field(default_factory=dict)
    """What ``unierase calibrate`` measured to choose the settings (a calibrated recipe only)."""

    def matches(self, model_config) -> bool:
        return all(getattr(model_config, key, None) == value for key, value in self.match.items())


def _parse(text: str, source: str) -> Recipe:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UniEraseError(f"{source}: line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise UniEraseError(f"{source}: a recipe is a JSON object")
    for key, kind in (("name", str), ("match", dict), ("edit", dict)):
        if not isinstance(data.get(key), kind):
            raise UniEraseError(f"{source}: field {key!r} must be a {kind.__name__}")
    if not data["match"]:
        raise UniEraseError(f"{source}: field 'match' must name at least one config field")
    unknown = set(data) - {"name", "match", "edit", "description", "why", "calibration"}
    if unknown:
        raise UniEraseError(f"{source}: unknown field(s) {sorted(unknown)}")
    recipe = Recipe(data["name"], data["match"], data["edit"], data.get("description", ""), data.get("why", {}), source,
                    data.get("calibration", {}))
    apply_recipe(recipe, {})  # the edit fields must make a valid EditConfig
    return recipe


def recipes_dir(cache_dir=None) -> Path:
    """Where ``unierase calibrate`` writes the recipes it measures (``recipe_for`` looks there first)."""
    from ...cache import Cache

    return Cache(cache_dir).root / "recipes"


def load_recipes(folder: str | Path | None = None) -> list[Recipe]:
    """The recipes shipped with the package (or the ``*.json`` of ``folder``), sorted by name."""
    if folder is None:
        files = [(f.read_text(encoding="utf-8"), f"unierase/edit/recipes/{f.name}")
                 for f in resources.files(__package__).iterdir() if f.name.endswith(".json")]
    else:
        files = [(f.read_text(encoding="utf-8"), str(f)) for f in sorted(Path(folder).glob("*.json"))]
    return sorted((_parse(text, source) for text, source in files), key=lambda r: r.name)


def recipe_for(model_config, recipes: list[Recipe] | None = None, *, cache_dir=None) -> Recipe | None:
    """The recipe whose ``match`` the config meets; ``None`` for a model no recipe knows. Without
    ``recipes``: a recipe ``unierase calibrate`` wrote into the cache wins over the packaged ones
    (the user measured it for this model)."""
    if recipes is None:
        folder = recipes_dir(cache_dir)
        calibrated = load_recipes(folder) if folder.is_dir() else []
        return recipe_for(model_config, calibrated) or recipe_for(model_config, load_recipes())
    found = [r for r in recipes if r.matches(model_config)]
    if len(found) > 1:
        raise UniEraseError(f"several recipes match this model: {', '.join(r.source for r in found)}")
    return found[0] if found else None


def apply_recipe(recipe: Recipe | None, overrides: dict):
    """``EditConfig`` from the neutral defaults, the recipe's fields, then ``overrides`` (non-``None``)."""
    from ..config import EditConfig
    from ..refit import RefitConfig
    from ..values import ValueConfig

    fields = dict(recipe.edit) if recipe else {}
    where = f"{recipe.source}: field 'edit'" if recipe else "EditConfig"
    fields.update({k: v for k, v in overrides.items() if v is not None})
    try:
        for name, kind in (("values", ValueConfig), ("entity_values", ValueConfig), ("refit", RefitConfig)):
            if isinstance(fields.get(name), dict):
                fields[name] = kind(**fields[name])
        return EditConfig(**fields)
    except TypeError as e:
        raise UniEraseError(f"{where}: {e}") from None
    except UniEraseError as e:
        raise UniEraseError(f"{where}: {e}") from None


def edit_config_for(model_config, *, cache_dir=None, **overrides):
    """(``EditConfig`` for this model, the recipe used or ``None``): neutral defaults, the matching
    recipe (``recipe_for``), then the caller's ``overrides``. A calibrated recipe that hides a
    packaged one is used, with a warning naming both."""
    recipe = recipe_for(model_config, cache_dir=cache_dir)
    hidden = shadowed_recipe(model_config, recipe)
    if hidden is not None:
        log.warning("the calibrated recipe %s (%s) is used instead of the packaged recipe %s for this model; "
                    "delete that file to use the packaged one (calibrate --out writes a recipe elsewhere)",
                    recipe.name, recipe.source, hidden.name)
    return apply_recipe(recipe, overrides), recipe


def shadowed_recipe(model_config, recipe: Recipe | None) -> Recipe | None:
    """The packaged recipe that ``recipe`` (one ``recipe_for`` found) hides, if it came from the cache
    and a packaged one matches the model too: a user who calibrated a model the package knows then
    no longer gets the packaged settings (nor later releases' changes to them)."""
    packaged = recipe_for(model_config, load_recipes()) if recipe is not None else None
    return packaged if packaged is not None and packaged != recipe else None


def with_settings(config, settings: dict[str, dict] | None):
    """``config`` (an ``EditConfig``) with the ``parse_settings`` fields replaced (validated; the
    original untouched); the ``token`` section is ``token_with_settings``'s."""
    settings = settings or {}
    unknown = set(settings) - set(SETTING_SECTIONS)
    if unknown:
        raise UniEraseError(f"unknown setting section(s) {sorted(unknown)} (choose from {', '.join(SETTING_SECTIONS)})")
    changes = {name: _replaced(getattr(config, name), settings[name])
               for name in ("values", "entity_values", "refit") if settings.get(name)}
    edit = settings.get("edit", {})
    if set(edit) & set(changes):
        raise UniEraseError(f"settings: {sorted(set(edit) & set(changes))} given both as a section and as edit fields")
    return _replaced(config, {**edit, **changes})


def token_with_settings(config, settings: dict[str, dict] | None):
    """The ``UnlearningTokenConfig`` ``config`` with the ``token`` section of ``parse_settings`` applied."""
    return _replaced(config, (settings or {}).get("token", {}))


def _replaced(config, changes: dict):
    """``dataclasses.replace`` with an unknown or invalid field as a ``UniEraseError``."""
    import dataclasses

    try:
        return dataclasses.replace(config, **changes)
    except TypeError as e:
        raise UniEraseError(f"settings: {e}") from None
