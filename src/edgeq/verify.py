"""`edgeq verify BUILD`: does a build still hold? Its manifest.json against this machine, now: edgeq's and every tool's
version, the recipe, device profiles and input data by hash, every artifact file by hash; then the final artifacts
validated again on their targets, each metric against the recorded one within the recipe's `verify.tolerance`, and
every threshold judged again. With `rebuild`, the whole build again into a scratch folder (no cache), its files
compared byte for byte with the recorded ones, stage by stage.

Every finding is a change {"kind", "what", "recorded", "now", "moves"}; the build holds when none moves."""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgeq import __version__
from edgeq.artifact import sha256_file
from edgeq.manifest import data_hash, environment, folder_files, read_manifest, tool_versions
from edgeq.progress import say
from edgeq.stage_cache import edgeq_source_hash

DEFAULT_RELATIVE = 1e-3  # a metric not named in verify.tolerance may move by 0.1% of its recorded value...
DEFAULT_FLOOR = 1e-3  # ... and by at least this much


def verify_build(build_dir: str | Path, rebuild: bool = False, allow_new_versions: bool = False) -> dict:
    build = Path(build_dir)
    manifest = read_manifest(build)
    changes = version_changes(manifest, allow_new_versions)
    plan, notes = replan(build, manifest)
    changes += input_changes(manifest, plan)
    changes += artifact_changes(build, manifest)
    validations = revalidate(plan, build, manifest)
    changes += metric_changes(manifest, validations, plan.recipe.verify.tolerance)
    rebuilt = None
    if rebuild:
        rebuilt = rebuild_changes(plan, manifest)
        changes += rebuilt["changes"]
    return {
        "build": str(build),
        "holds": not any(c["moves"] for c in changes),
        "changes": changes,
        "notes": notes,
        "validations": [
            {k: v[k] for k in ("artifact", "device", "mode", "metrics", "passed", "failures")} for v in validations
        ],
        "rebuild": rebuilt and {k: v for k, v in rebuilt.items() if k != "changes"},
    }


def _change(kind: str, what: str, recorded, now, moves: bool = True) -> dict:
    return {"kind": kind, "what": what, "recorded": recorded, "now": now, "moves": moves}


def version_changes(manifest: dict, allow_new_versions: bool) -> list[dict]:
    """edgeq's version and source, and each tool's version; with `allow_new_versions` they are said, not counted."""
    moves = not allow_new_versions
    changes = []
    recorded = manifest["edgeq"]
    if recorded["version"] != __version__:
        changes.append(_change("version", "edgeq", recorded["version"], __version__, moves))
    elif recorded["source_hash"] != (source := edgeq_source_hash()):
        changes.append(_change("version", "edgeq source", recorded["source_hash"][:12], source[:12], moves))
    tools = tool_versions()
    for tool, version in manifest["tools"].items():
        if tools.get(tool, version) != version:
            changes.append(_change("version", tool, version, tools.get(tool), moves))
    here = environment()
    if here["isa"] != manifest.get("environment", {}).get("isa", here["isa"]):  # said: numbers may then move
        changes.append(_change("environment", "host ISA", manifest["environment"]["isa"], here["isa"], False))
    return changes


def replan(build: Path, manifest: dict):
    """The build's plan again, on the devices it was validated on: from its recipe file when that still hashes as
    recorded (its relative data paths then resolve on this checkout), else from the resolved copy in the build."""
    from edgeq.pipeline import plan_build
    from edgeq.report import RESOLVED_RECIPE

    recipe_file = Path(manifest["recipe_file"])
    notes = []
    if recipe_file.is_file() and sha256_file(recipe_file) == manifest["recipe_hash"]:
        source = recipe_file
    else:
        source = build / RESOLVED_RECIPE
        notes.append(f"the recipe {recipe_file} is gone or changed: validated with the build's {RESOLVED_RECIPE}")
    plan = plan_build(source, build, list(manifest["devices"]))
    validation = plan.recipe.validation.model_copy(update={"diverge": "never"})  # verify writes nothing in BUILD
    plan.recipe = plan.recipe.model_copy(update={"validation": validation})
    plan.recipe_path = recipe_file
    return plan, notes


def input_changes(manifest: dict, plan) -> list[dict]:
    """The recipe file, each device profile and each input (model, data) by hash."""
    from edgeq.targets.profiles import device_files

    changes = []
    recipe_file = Path(manifest["recipe_file"])
    now = sha256_file(recipe_file) if recipe_file.is_file() else None
    if now != manifest["recipe_hash"]:
        changes.append(_change("hash", f"recipe {recipe_file}", manifest["recipe_hash"][:12], now and now[:12]))
    files = device_files()
    for device, digest in manifest["devices"].items():
        now = sha256_file(files[device]) if device in files else None
        if now != digest:
            changes.append(_change("hash", f"device profile {device}", digest[:12], now and now[:12]))
    model, source = manifest["inputs"]["model"], manifest["inputs"]["model_source"]
    if plan.model_hash != model:
        changes.append(_change("hash", f"model {source}", model[:12], plan.model_hash[:12]))
    base = recipe_file.parent
    for path, digest in manifest["inputs"]["data"].items():
        found = base / path
        now = data_hash(found) if found.exists() else None
        if now != digest:
            changes.append(_change("hash", f"data {path}", digest[:12], now and now[:12]))
    return changes


def artifact_changes(build: Path, manifest: dict) -> list[dict]:
    """Every recorded artifact file, hashed again (a missing file moves too)."""
    changes = []
    for artifact in manifest["artifacts"]:
        folder = (build / artifact["path"]).parent
        now = folder_files(folder) if folder.is_dir() else {}
        for name, digest in artifact["files"].items():
            if now.get(name) != digest:
                where = f"{folder.name}/{name}"
                changes.append(_change("hash", where, digest[:12], now[name][:12] if name in now else "missing"))
    return changes


def revalidate(plan, build: Path, manifest: dict) -> list[dict]:
    """The final artifacts validated again against the build's FP32 model, on every target, as the build did."""
    from edgeq.pipeline import validate_stage

    finals = [a for a in manifest["artifacts"] if a["name"].startswith("final")]
    fp32 = next(a for a in manifest["artifacts"] if a["name"] == "fp32")
    models = {"fp32": build / fp32["path"], **{a["name"]: build / a["path"] for a in finals}}
    served = {device: a["name"] for a in finals for device in a["metrics"]}
    for device in manifest["devices"]:
        served.setdefault(device, finals[0]["name"])
    stage = validate_stage(plan, models, "fp32", served)
    return [v for v in stage.details["validations"] if v["artifact"] != "fp32"]


def tolerance_for(metric: str, recorded: float, tolerance) -> float:
    if isinstance(tolerance, (int, float)):
        return float(tolerance)
    base = metric.removesuffix("_reference").removesuffix("_delta")
    if base in tolerance:
        return tolerance[base]
    return max(DEFAULT_FLOOR, DEFAULT_RELATIVE * abs(recorded))


def metric_changes(manifest: dict, validations: list[dict], tolerance) -> list[dict]:
    """Each recorded metric of a final artifact against the one measured now; each threshold judged again."""
    changes = []
    for artifact in (a for a in manifest["artifacts"] if a["name"].startswith("final")):
        for device, recorded in artifact["metrics"].items():
            found = next((v for v in validations if v["artifact"] == artifact["name"] and v["device"] == device), None)
            where = f"{artifact['name']} on {device}"
            if found is None:
                changes.append(_change("metric", f"{where}: not validated", "validated", None))
                continue
            for metric, value in recorded.items():
                now = found["metrics"].get(metric)
                allowed = tolerance_for(metric, value, tolerance)
                moved = not isinstance(now, (int, float)) or abs(now - value) > allowed
                if moved or now != value:
                    changes.append(_change("metric", f"{where}: {metric} (tolerance {allowed:g})", value, now, moved))
            if artifact["passed"].get(device) and not found["passed"]:
                changes.append(_change("threshold", f"{where}: {'; '.join(found['failures'])}", "passed", "failed"))
    return changes


def rebuild_changes(plan, manifest: dict) -> dict:
    """The whole build again (no cache) into a scratch folder; each recorded artifact file compared with the rebuilt
    one. The first stage whose bytes differ is where the tools are not deterministic (every later stage reads it)."""
    from edgeq.pipeline import plan_build, run_build

    with tempfile.TemporaryDirectory(prefix="edgeq-verify-") as scratch:
        say(f"▶ rebuilding {plan.recipe.name} into a scratch folder, no cache")
        again = plan_build(plan.recipe_path, Path(scratch) / "build", list(manifest["devices"]))
        result = run_build(again, force=True)
        compared = {}
        for artifact in manifest["artifacts"]:
            folder = result.out_dir / Path(artifact["path"]).parent
            now = folder_files(folder) if folder.is_dir() else {}
            compared[artifact["name"]] = sorted(n for n, d in artifact["files"].items() if now.get(n) != d)
    differing = [name for name, files in compared.items() if files]
    changes = [
        _change(
            "rebuild",
            f"{name}/ rebuilt: {', '.join(files)} differ",
            "recorded bytes",
            "other bytes",
            name.startswith("final"),
        )
        for name, files in compared.items()
        if files
    ]
    return {
        "identical": [name for name, files in compared.items() if not files],
        "differing": differing,
        "first_differing_stage": differing[0] if differing else None,
        "changes": changes,
    }


def moved_line(result: dict) -> str:
    """One line naming everything that moved (the CLI's `Error:` line)."""
    moved = [c for c in result["changes"] if c["moves"]]
    parts = [f"{c['what']}: {c['recorded']} → {c['now']}" for c in moved]
    return f"{result['build']} no longer holds: {len(moved)} moved: " + "; ".join(parts)
