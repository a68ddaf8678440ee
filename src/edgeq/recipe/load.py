"""Read a recipe file into a `Recipe`: safe YAML only, errors that name the file, the line and the key."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from edgeq.errors import RecipeError
from edgeq.recipe.schema import Recipe
from edgeq.schema_errors import explain as explain_against
from edgeq.schema_errors import parse_yaml
from edgeq.schema_errors import unknown_key as unknown_key_of


def load_recipe(path: str | Path) -> Recipe:
    """Load and validate a recipe. Raises RecipeError with one readable line on any problem."""
    path = Path(path)
    if not path.is_file():
        where = "is a folder" if path.is_dir() else "not found"
        raise RecipeError(f"recipe '{path}' {where}", "Give the path of a .yaml recipe (see `edgeq recipes list`)")
    text = path.read_text(encoding="utf-8")
    data = parse_yaml(text, path)
    if not isinstance(data, dict):
        raise RecipeError(f"recipe '{path}': the top level must be a mapping of keys, not {type(data).__name__}")
    try:
        return Recipe.model_validate(data, context={"base_dir": path.parent.resolve()})
    except ValidationError as exc:
        raise explain(exc, text, f"recipe '{path}'") from None


def explain(exc: ValidationError, text: str, label: str) -> RecipeError:
    """A recipe's first validation error as one line (see edgeq.schema_errors)."""
    return explain_against(exc, text, label, Recipe)


def unknown_key(dotted: str) -> RecipeError | None:
    """Why a dotted key names no recipe key, with the closest valid one; None if it does."""
    return unknown_key_of(dotted, Recipe)
