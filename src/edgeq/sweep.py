"""Fleet builds: a sweep names recipes, target devices and a grid of recipe overrides; every cell (one recipe, one
target, one combination of overrides) is one `edgeq build`, run as a Ray task (src/edgeq/sweep_ray.py). This
module is what does not need Ray: the sweep file, the cells, each cell's recipe, its folder, and the results
(sweep.json, sweep.html, the terminal table). Ray is imported only by sweep_ray.py, and only by `edgeq sweep`.

Each cell builds into a scratch folder (`cells/.tmp-<id>-<attempt>`) renamed to `cells/<id>` when the build has
ended, with `cell.json` beside its report: a killed worker leaves no half-written build folder, and a re-run skips
every cell that has one."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator

from edgeq.data_source import Strict
from edgeq.errors import RecipeError

CELL_FILE = "cell.json"
RUNNING = ".running"  # cells/.running/<id>.json: which process is building which cell (for operators and tests)


class SweepConfig(Strict):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Sweep name; the default output folder is build/sweeps/<name>.",
    )
    recipes: list[str] = Field(min_length=1, description="Recipe files, relative to the sweep file.")
    targets: list[str] | None = Field(
        default=None, description="Device ids replacing each recipe's targets; one cell per target either way."
    )
    grid: dict[str, list[Any]] = Field(
        default={},
        description="Dotted recipe key → values; every combination is a cell (e.g. "
        "`quantization.per_channel: [true, false]`).",
    )

    @field_validator("grid")
    @classmethod
    def _non_empty_values(cls, grid: dict) -> dict:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid key '{key}' has no values")
        return grid


@dataclass
class Cell:
    recipe_path: Path
    target: str
    overrides: dict[str, Any]
    recipe: dict = field(repr=False)

    @property
    def id(self) -> str:
        label = "-".join(f"{k.split('.')[-1]}-{v}" for k, v in self.overrides.items())
        digest = hashlib.sha256(
            json.dumps([str(self.recipe_path), self.target, self.overrides], sort_keys=True, default=str).encode()
        ).hexdigest()[:8]
        stem = "_".join(p for p in (self.recipe["name"], self.target, label) if p)
        return "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "-" for c in stem)[:90] + f"_{digest}"


def load_sweep(path: str | Path) -> tuple[SweepConfig, list[Cell]]:
    """The sweep file and its cells; every recipe is checked (one `Error:` line names the bad one)."""
    from pydantic import ValidationError

    from edgeq.recipe.load import load_recipe, unknown_key
    from edgeq.schema_errors import explain, parse_yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"sweep '{path}' not found", "Give the path of a sweep .yaml (see README: Fleet builds)")
    text = path.read_text(encoding="utf-8")
    data = parse_yaml(text, path, "sweep")
    if not isinstance(data, dict):
        raise RecipeError(f"sweep '{path}': the top level must be a mapping of keys")
    try:
        sweep = SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, text, f"sweep '{path}'", SweepConfig) from None
    for key in sweep.grid:
        if (problem := unknown_key(key)) is not None:
            raise RecipeError(f"sweep '{path}': grid key '{key}': {problem.message}", problem.hint)
    cells = []
    combos = [dict(zip(sweep.grid, values)) for values in itertools.product(*sweep.grid.values())] or [{}]
    for name in sweep.recipes:
        recipe_path = (path.parent / name).resolve()
        recipe = load_recipe(recipe_path).model_dump(mode="json")
        for target in sweep.targets or recipe["targets"]:
            for overrides in combos:
                cells.append(Cell(recipe_path, target, overrides, recipe))
    for cell in cells:
        check_cell(path, cell)
    return sweep, cells


def check_cell(path: Path, cell: Cell) -> None:
    """The cell's recipe must load and its target exist, before any cell starts (one `Error:` line if not)."""
    from pydantic import ValidationError

    from edgeq.recipe.load import explain
    from edgeq.recipe.schema import Recipe
    from edgeq.targets.profiles import load_device

    label = f"sweep '{path}': the cell {cell.recipe['name']} on {cell.target}" + "".join(
        f", {k}={v!r}" for k, v in cell.overrides.items()
    )
    try:
        Recipe.model_validate(cell_recipe(cell))
    except ValidationError as exc:
        raise explain(exc, "", label) from None
    load_device(cell.target)


def cell_recipe(cell: Cell) -> dict:
    """The cell's recipe: the resolved recipe (absolute paths), its overrides applied, its one target."""
    recipe = json.loads(json.dumps(cell.recipe))
    for key, value in cell.overrides.items():
        node = recipe
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node
        if not isinstance(node, dict):
            raise RecipeError(f"grid key '{key}' does not name a recipe key")
        node[last] = value
    recipe["targets"] = [cell.target]
    recipe["name"] = cell.id
    return recipe


def finished(out_dir: Path, cell: Cell) -> dict | None:
    """The recorded result of a cell whose build ran to its verdict (passed or failed), else None: a cell that
    ended in an error is run again."""
    try:
        row = json.loads((out_dir / "cells" / cell.id / CELL_FILE).read_text())
    except (OSError, ValueError):
        return None
    return row if row.get("status") in ("passed", "failed") else None


def build_cell(cell: Cell, out_dir: Path, node: str, attempt_tag: str, timeout: float | None = None) -> dict:
    """Run one cell's build in a child process (`edgeq build`) into a scratch folder, then move it into place.
    Returns the cell's row of sweep.json."""
    cells = out_dir / "cells"
    scratch = cells / f".tmp-{cell.id}-{attempt_tag}"
    final = cells / cell.id
    for stale in cells.glob(f".tmp-{cell.id}-*"):  # an earlier attempt, killed mid-build
        shutil.rmtree(stale, ignore_errors=True)
    scratch.mkdir(parents=True)
    (cells / RUNNING).mkdir(exist_ok=True)
    marker = cells / RUNNING / f"{cell.id}.json"
    marker.write_text(json.dumps({"pid": os.getpid(), "node": node, "started": time.time()}))
    recipe_file = scratch / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(cell_recipe(cell), sort_keys=False))
    started = time.perf_counter()
    env = {**os.environ, "EDGEQ_QUIET": "1"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "edgeq.cli", "build", str(recipe_file), "-o", str(scratch / "build")],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            preexec_fn=_die_with_parent,
        )
        code, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired:
        code, stderr = 124, f"Error: the cell's build took longer than {timeout} s"
    row = _row(cell, code, stderr, scratch / "build", final / "build", time.perf_counter() - started, node)
    (scratch / CELL_FILE).write_text(json.dumps(row, indent=2))
    if final.exists():
        shutil.rmtree(final)
    scratch.rename(final)
    marker.unlink(missing_ok=True)
    return row


def _die_with_parent() -> None:
    """In the build's child process: die when the worker running the cell dies (Linux), so that a killed worker
    leaves no orphan build writing into a scratch folder its retry is about to remove."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _row(cell: Cell, code: int, stderr: str, built: Path, final_build: Path, seconds: float, node: str) -> dict:
    status = {0: "passed", 3: "failed"}.get(code, "error")
    row = {
        "recipe": str(cell.recipe_path),
        "target": cell.target,
        "overrides": cell.overrides,
        "status": status,
        "exit_code": code,
        "metrics": None,
        "size_ratio": None,
        "build_dir": str(final_build),
        "seconds": round(seconds, 1),
        "node": node,
        "cell": cell.id,
    }
    report_file = built / "report.json"
    if report_file.is_file():
        report = json.loads(report_file.read_text())
        final = next((v for v in report["validations"] if v["artifact"] == report["final_artifact"]), None)
        row["metrics"] = final["metrics"] if final else None
        row["size_ratio"] = next(
            (a["size_ratio"] for a in report["artifacts"] if a["name"] == report["final_artifact"]), None
        )
        profile = next((p for p in report.get("profiles") or [] if final and p["device"] == final["device"]), None)
        row["mode"] = final["mode"] if final else None
        row["p50_ms"] = (final.get("latency_ms") or {}).get("p50") if final else None
        row["peak_rss_mb"] = profile.get("peak_rss_mb") if profile else None  # the final model's, as profiled
        row["build_peak_rss_mb"] = report.get("peak_rss_mb")
    if status == "error":
        lines = [
            line for line in stderr.strip().splitlines() if line.startswith("Error:")
        ] or stderr.strip().splitlines()[-1:]
        row["error"] = lines[-1] if lines else f"exit code {code}"
    return row


def write_results(out_dir: Path, rows: list[dict], ray_info: dict) -> dict:
    from edgeq.atomic import write_text

    result = {"cells": rows, "ray": ray_info}
    write_text(out_dir / "sweep.json", json.dumps(result, indent=2, default=str) + "\n")
    write_text(out_dir / "sweep.html", sweep_html(out_dir, rows, ray_info))
    return result


def sweep_html(out_dir: Path, rows: list[dict], ray_info: dict) -> str:
    """The Pareto page of every finished cell (edgeq.pareto), then the cells with a link to each report."""
    from edgeq.pareto import pareto_html, sweep_points

    body = []
    for row in rows:
        report = Path(row["build_dir"]) / "report.html"
        link = f"<a href='{escape(os.path.relpath(report, out_dir))}'>report</a>" if report.is_file() else "—"
        cosine = (row.get("metrics") or {}).get("cosine_mean")
        cosine_text = "" if cosine is None else f"{cosine:.4f}"
        size_text = "" if row["size_ratio"] is None else f"{row['size_ratio']:.1%}"
        body.append(
            f"<tr><td>{escape(Path(row['recipe']).name)}</td><td>{escape(row['target'])}</td>"
            f"<td>{escape(json.dumps(row['overrides']))}</td><td class={'pass' if row['status'] == 'passed' else 'fail'}>{row['status']}</td>"
            f"<td>{cosine_text}</td><td>{size_text}</td><td>{row['seconds']}</td>"
            f"<td>{escape(str(row['node']))}</td><td>{link}</td></tr>"
        )
    cells = (
        "<h2>Cells</h2><table><tr><th>recipe</th><th>target</th><th>overrides</th><th>status</th><th>cosine mean</th>"
        "<th>size</th><th>seconds</th><th>node</th><th>build</th></tr>" + "".join(body) + "</table>"
    )
    page = pareto_html(
        "edgeq sweep",
        sweep_points(rows),
        [r["build_dir"] for r in rows],
        f"{len(rows)} cells on Ray at {escape(str(ray_info.get('address')))}, {ray_info.get('nodes')} node(s). ",
    )
    return page.replace("</body></html>", cells + "</body></html>", 1)


def print_table(rows: list[dict]) -> None:
    from rich.table import Table

    from edgeq.summary import table_console

    table = Table(
        title=f"edgeq sweep: {sum(r['status'] == 'passed' for r in rows)}/{len(rows)} cells passed",
        title_justify="left",
    )
    for column in ("recipe", "target", "overrides", "status", "cosine mean", "size", "seconds", "node"):
        table.add_column(column)
    for row in rows:
        cosine = (row.get("metrics") or {}).get("cosine_mean")
        colour = "green" if row["status"] == "passed" else "red"
        table.add_row(
            Path(row["recipe"]).name,
            row["target"],
            json.dumps(row["overrides"]),
            f"[{colour}]{row['status']}[/{colour}]" + (f" {row['error']}" if row.get("error") else ""),
            "" if cosine is None else f"{cosine:.4f}",
            "" if row["size_ratio"] is None else f"{row['size_ratio']:.1%}",
            str(row["seconds"]),
            str(row["node"]),
        )
    table_console().print(table)
