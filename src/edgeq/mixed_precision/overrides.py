"""The overrides file: a per-island precision that a recipe can pin to reproduce a choice with no search.

    _default: int8                                   # every island not named below
    /encoder/layer.0/output/dense/MatMul: w8         # an exact ONNX node name (or a readable island name)
    "re:.*intermediate.*": w8                        # a regular expression over node and island names

Lookup order per island: exact node name, exact island name, the first matching `re:` key, `_default`."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import yaml

from edgeq.errors import ConstraintError, RecipeError
from edgeq.mixed_precision.islands import LADDER, Island

DEFAULT_KEY = "_default"


def write_overrides(path: Path, islands: list[Island], assignment: dict[str, str], header: str) -> None:
    counts = {rung: list(assignment.values()).count(rung) for rung in LADDER}
    default = max(counts, key=counts.get)
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append(f"{DEFAULT_KEY}: {default}")
    for island in islands:
        if assignment[island.name] != default:
            lines.append(
                f"{yaml.safe_dump(island.node_name).strip().removesuffix('...').strip()}: "
                f"{assignment[island.name]}   # {island.name}"
            )
    path.write_text("\n".join(lines) + "\n")


def load_overrides(path: Path) -> dict[str, str]:
    from edgeq.schema_errors import parse_yaml

    if not path.is_file():
        raise RecipeError(f"mixed_precision.overrides: file '{path}' not found", "Use the overrides.yaml of a build")
    data = parse_yaml(path.read_text(encoding="utf-8"), path, "overrides")
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise RecipeError(f"overrides '{path}': expected a mapping of node name to precision ({', '.join(LADDER)})")
    for key, value in data.items():
        if value not in LADDER:
            raise RecipeError(
                f"overrides '{path}': '{key}' has precision '{value}'", f"Use one of: {', '.join(LADDER)}"
            )
    return data


def resolve(overrides: dict[str, str], islands: list[Island], ladder: list[str], source: Path) -> dict[str, str]:
    """The precision of every island under `overrides`; a name that matches no island is an error."""
    names = {i.node_name for i in islands} | {i.name for i in islands}
    for key in overrides:
        if key != DEFAULT_KEY and not key.startswith("re:") and key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=1)
            raise ConstraintError(
                f"overrides '{source}': no island named '{key}'",
                f"Did you mean '{close[0]}'?" if close else "See report.json mixed_precision.islands",
            )
    patterns = [(re.compile(k[3:]), v) for k, v in overrides.items() if k.startswith("re:")]
    assignment = {}
    for island in islands:
        choice = overrides.get(island.node_name) or overrides.get(island.name)
        if choice is None:
            choice = next((v for p, v in patterns if p.fullmatch(island.node_name) or p.fullmatch(island.name)), None)
        choice = choice or overrides.get(DEFAULT_KEY, ladder[0])
        if choice not in island.candidates:
            raise ConstraintError(
                f"overrides '{source}': '{island.name}' cannot be {choice}",
                f"It can be: {', '.join(island.candidates)}",
            )
        assignment[island.name] = choice
    return assignment
