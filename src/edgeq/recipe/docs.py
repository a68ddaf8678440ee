"""docs/recipe.md, generated from the recipe schema's field descriptions (the schema is the documentation):

    python -m edgeq.recipe.docs > docs/recipe.md

A test checks that the file in the repository is what this writes, so the two never drift apart."""

from __future__ import annotations

import json
import re
import typing

from pydantic import BaseModel

from edgeq.recipe.schema import Recipe

HEADER = """# Recipe reference

Generated from edgeq's recipe schema (`src/edgeq/recipe/schema.py`) by `python -m edgeq.recipe.docs`; do not edit
by hand. A recipe is YAML, read with `yaml.safe_load`; unknown keys are refused, and no code runs from a recipe.
`edgeq init MODEL --device ID` writes a commented starting point. Paths are relative to the recipe file.
"""


def render() -> str:
    sections: list[str] = [HEADER]
    _model_section(Recipe, "", sections)
    return "\n".join(sections)


def _model_section(model: type[BaseModel], prefix: str, sections: list[str]) -> None:
    rows, nested = [], []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        inner = _nested_model(field.annotation)
        rows.append(f"| `{key}` | {_type(field.annotation)} | {_default(field)} | {_cell(field.description or '')} |")
        if inner is not None:
            nested.append((inner, f"{key}."))
    title = prefix.rstrip(".") or "top level"
    doc = (model.__doc__ or "").strip()
    sections += [
        f"## `{title}`" if prefix else "## Top level",
        "",
        *([doc, ""] if doc and prefix else []),
        "| key | type | default | meaning |",
        "|---|---|---|---|",
        *rows,
        "",
    ]
    for inner, inner_prefix in nested:
        _model_section(inner, inner_prefix, sections)


def _nested_model(annotation) -> type[BaseModel] | None:
    candidates = [annotation, *typing.get_args(annotation)]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        for arg in typing.get_args(candidate):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def _type(annotation) -> str:
    text = str(annotation).replace("typing.", "").replace("pathlib._local.", "").replace("pathlib.", "")
    text = (
        text.replace("<class '", "")
        .replace("'>", "")
        .replace("edgeq.recipe.schema.", "")
        .replace("edgeq.data_source.", "")
    )
    text = re.sub(r"Annotated\[(\w+), Gt\(gt=0\)\]", r"\1 > 0", text)
    text = re.sub(r"Optional\[(.*)\]$", r"\1 | None", text)
    return _cell(text)


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if isinstance(value, BaseModel):
        return "(section defaults)"
    try:
        return _cell(f"`{json.dumps(value, default=str)}`")
    except TypeError:
        return _cell(f"`{value}`")


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


if __name__ == "__main__":
    print(render(), end="")
