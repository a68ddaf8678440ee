"""manifest.json: what a build was made from and what it made, in hashes and versions, so that `edgeq verify` can
say later whether the build still holds (docs/verify.md; contract in DESIGN.md).

    {"edgeq": {"version", "source_hash"}, "tools": {name: version}, "recipe_file", "recipe_hash",
     "devices": {id: hash}, "inputs": {"model", "model_source", "data": {path: hash}}, "environment": {...},
     "artifacts": [{"name", "path", "sha256", "files": {file: sha256}, "metrics": {device: {...}},
                    "modes": {device: mode}, "passed": {device: bool}}]}

An artifact's `sha256` is its model file's; `files` holds every file of its folder (external weights, the decode
graph, genai_config.json, tokenizer files), which is what verify re-hashes."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from edgeq import __version__
from edgeq.artifact import sha256_file
from edgeq.atomic import write_text
from edgeq.stage_cache import edgeq_source_hash, installed_versions

MANIFEST_FILE = "manifest.json"
TOOLS = (
    "onnx",
    "onnxruntime",
    "onnxruntime-qnn",
    "onnxruntime-genai",
    "optimum",
    "optimum-onnx",
    "transformers",
    "torch",
    "numpy",
)


def tool_versions() -> dict[str, str | None]:
    """The installed version of every tool a build's bytes or numbers depend on (None: not installed)."""
    return installed_versions(TOOLS)


ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
)


def environment() -> dict:
    """The machine the build measured on: numbers from another ISA are not expected to match to the last digit."""
    from edgeq.targets import host

    flags = host.cpu_flags()
    return {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "isa": [f for f in ISA_FLAGS if f in flags],
    }


def folder_files(folder: Path) -> dict[str, str]:
    """Every file of an artifact folder (relative name -> sha256), edgeq's own bookkeeping left out."""
    return {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith("edgeq-stage")
    }


def build_manifest(
    out_dir: Path,
    recipe_path: Path,
    devices: dict[str, Path],
    data: list[Path],
    model_hash: str,
    model_source: str,
    report: dict,
) -> dict:
    """The manifest of a build whose report.json is `report`; `devices` maps each target's id to its profile file,
    `data` lists the recipe's data files (calibration, validation)."""
    return {
        "edgeq": {"version": __version__, "source_hash": edgeq_source_hash()},
        "tools": tool_versions(),
        "recipe_file": str(recipe_path),
        "recipe_hash": sha256_file(recipe_path),
        "devices": {device: sha256_file(path) for device, path in devices.items()},
        "inputs": {
            "model": model_hash,
            "model_source": model_source,
            "data": {_relative(path, recipe_path.parent): data_hash(path) for path in data},
        },
        "environment": environment(),
        "artifacts": artifact_entries(out_dir, report),
    }


def manifest_of(plan, report: dict) -> dict:
    """The manifest of a build `plan` (edgeq.pipeline.Plan) that wrote `report`."""
    from edgeq.targets.profiles import device_files

    files = device_files()
    recipe = plan.recipe
    data = [recipe.validation.data.path]
    if recipe.quantization.calibration is not None:
        data.append(recipe.quantization.calibration.data.path)
    if recipe.mixed_precision is not None and recipe.mixed_precision.overrides is not None:
        data.append(Path(recipe.mixed_precision.overrides))  # a pinned choice of precisions is an input too
    return build_manifest(
        plan.out_dir,
        plan.recipe_path,
        {d.id: files[d.id] for d in plan.devices if d.id in files},
        list(dict.fromkeys(data)),
        plan.model_hash,
        recipe.model.source,
        report,
    )


def _relative(path: Path, base: Path) -> str:
    """A data file's key: its path as the recipe's folder sees it when it lies inside it (the same key on any
    checkout of the same repository), else its absolute path (edgeq's own samples, a file given with --data)."""
    import os

    path, base = Path(path).resolve(), base.resolve()
    return os.path.relpath(path, base) if path.is_relative_to(base) else str(path)


def moved_recipe(out_dir: Path, recipe_file: Path) -> None:
    """The manifest of a build whose recipe was written to a scratch file (`edgeq build --model`) names the copy
    kept in the build folder instead (the same bytes)."""
    manifest = json.loads((out_dir / MANIFEST_FILE).read_text())
    manifest["recipe_file"] = str(recipe_file)
    write_manifest(out_dir, manifest)


def data_hash(path: Path) -> str:
    from edgeq.artifact import sha256_tree

    return sha256_tree(path) if Path(path).is_dir() else sha256_file(path)


def artifact_entries(out_dir: Path, report: dict) -> list[dict]:
    """Each stage's model and each final folder, with the validation metrics each device measured of it."""
    entries = [_entry(out_dir, a["name"], a["path"], report, a["name"]) for a in report["artifacts"]]
    served = report.get("finals") or {}
    for path in dict.fromkeys(f["path"] for f in served.values()):
        artifact = next(f["artifact"] for f in served.values() if f["path"] == path)
        entries.append(_entry(out_dir, Path(path).parent.name, path, report, artifact))
    return entries


def _entry(out_dir: Path, name: str, path: str, report: dict, validated_as: str) -> dict:
    validations = [v for v in report["validations"] if v["artifact"] == validated_as]
    files = folder_files((out_dir / path).parent)
    return {
        "name": name,
        "path": path,
        "sha256": files[Path(path).name],
        "files": files,
        "metrics": {v["device"]: _numbers(v["metrics"]) for v in validations},
        "modes": {v["device"]: v["mode"] for v in validations},
        "passed": {v["device"]: v["passed"] for v in validations},
    }


def _numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def write_manifest(out_dir: Path, manifest: dict) -> None:
    write_text(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")


def read_manifest(build_dir: Path) -> dict:
    from edgeq.errors import OutputError

    path = build_dir / MANIFEST_FILE
    if not path.is_file():
        raise OutputError(
            f"'{build_dir}' has no {MANIFEST_FILE}",
            "Give a build folder written by edgeq build (0.x builds since wave 3)",
        )
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise OutputError(f"'{path}' is not valid JSON ({exc})", "Rebuild it with edgeq build") from None
