"""One explainer for every data file edgeq reads against a schema (recipes, device profiles, sweeps): safe YAML
only, and the first validation error as one line naming the file, the line, the dotted key, what is wrong and a
hint (the closest valid key, or the key's description)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from edgeq.errors import EdgeqError, RecipeError


def parse_yaml(text: str, path: Path, kind: str = "recipe", error: type[EdgeqError] = RecipeError) -> Any:
    """Safe YAML; a parse error is one `error` line naming the file as a `kind` (recipe, device profile, sweep)."""
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise error(
            f"{kind} '{path}' line {line}: YAML tag not allowed ({exc.problem})",
            f"A {kind} is plain data; tags that construct objects are refused and nothing was run",
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start:
            problem += f", {context} started on line {start.line + 1}"
        raise error(f"{kind} '{path}'{line}: cannot parse YAML ({problem})") from None


def explain(
    exc: ValidationError, text: str, label: str, model: type[BaseModel], error: type[EdgeqError] = RecipeError
) -> EdgeqError:
    """The first validation error of `model` as one `error` line: `label` (which file), line, dotted key, what is
    wrong, a hint (the closest valid key, or the key's description)."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")  # a typo beats the key it hid
    err = errors[0]
    loc = [str(part) for part in err["loc"]]
    key = ".".join(loc) or "(top level)"
    line = _line_of(text, loc)
    where = label + (f" line {line}" if line else "")
    if err["type"] == "extra_forbidden":
        parent, name = loc[:-1], loc[-1]
        valid = _fields_at(parent, model)
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hint = f"Did you mean '{close[0]}'?" if close else f"Valid keys here: {', '.join(valid)}"
        return error(f"{where}: unknown key '{key}'", hint)
    if err["type"] == "missing":
        return error(f"{where}: missing required key '{key}'", _doc_hint(loc, model))
    message = err["msg"].removeprefix("Value error, ")
    if loc:
        value = err.get("input")
        shown = f" (got {value!r})" if not isinstance(value, (dict, list)) else ""
        return error(f"{where}: key '{key}': {message}{shown}")
    return error(f"{where}: {message}")


def unknown_key(dotted: str, model: type[BaseModel], kind: str = "recipe") -> RecipeError | None:
    """Why a dotted key (`quantization.per_channel`) names no key of `model`, with the closest valid one; None if it
    does."""
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        valid = _fields_at(parts[:depth], model)
        if part in valid:
            continue
        here = ".".join(parts[:depth])
        if not valid:
            return RecipeError(f"'{here}' is a value, not a section with keys", f"Use '{here}' itself")
        close = difflib.get_close_matches(part, valid, n=1, cutoff=0.6)
        prefix = f"{here}." if here else ""
        hint = f"Did you mean '{prefix}{close[0]}'?" if close else f"Valid keys here: {', '.join(valid)}"
        return RecipeError(f"unknown {kind} key '{prefix}{part}'", hint)
    return None


def _fields_at(loc: list[str], model: type[BaseModel]) -> list[str]:
    """Names of the valid keys of the schema section at `loc` (list indexes are skipped)."""
    for part in loc:
        if part.isdigit():
            continue
        annotation = model.model_fields[part].annotation
        nested = _model_in(annotation)
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _doc_hint(loc: list[str], model: type[BaseModel]) -> str | None:
    try:
        parent, name = loc[:-1], loc[-1]
        for part in parent:
            model = _model_in(model.model_fields[part].annotation)  # type: ignore[assignment]
        return f"'{name}': {model.model_fields[name].description}"
    except (KeyError, AttributeError, TypeError):
        return None


def _line_of(text: str, loc: list[str]) -> int | None:
    """1-based line of the deepest key of `loc` that exists in the YAML text (None when unknown)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return line
