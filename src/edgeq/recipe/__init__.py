"""Recipes: the YAML files that describe a build. `schema` is the reference, `load` reads and checks a file."""

from edgeq.recipe.load import load_recipe
from edgeq.recipe.schema import Recipe

__all__ = ["Recipe", "load_recipe"]
