"""The build's content-addressed stage cache: a stage's folder is served again while its key (the stage, edgeq's
version and source, the tools' versions, and what the stage read) and its files' hashes match; a shared cache
(EDGEQ_SHARED_CACHE) lets builds on several machines reuse each other's stages. A stage runs into a scratch folder
that replaces its folder only when complete."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path

from edgeq import __version__
from edgeq.artifact import sha256_file
from edgeq.atomic import atomic_dir
from edgeq.headroom import StagePeak, trim_heap
from edgeq.progress import say

STAGE_FILE = "edgeq-stage.json"
MODEL_FILE = "model.onnx"
TOOLS = ("onnx", "onnxruntime", "optimum-onnx", "transformers", "torch")


@dataclass
class StageResult:
    name: str
    folder: Path | None
    key: str | None
    seconds: float
    cached: bool
    details: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {"name": self.name, "seconds": round(self.seconds, 2), "cached": self.cached, **self.details}


def cached_stage(
    folder: Path, stage: str, key_material: dict, produce: Callable[[Path], dict], force: bool
) -> StageResult:
    """Serve the stage from `folder` when its key matches (or from the shared cache, EDGEQ_SHARED_CACHE, a folder
    of stage outputs by key that builds on several machines share), else run `produce` into a fresh folder
    atomically (and offer the result to the shared cache)."""
    key = digest({"stage": stage, "edgeq": __version__, "tools": tool_versions(), **key_material})
    record = None if force else read_stage_record(folder, key)
    if record is None and not force and (shared := _shared_entry(stage, key)) is not None:
        with atomic_dir(folder) as scratch:
            shutil.copytree(shared, scratch, dirs_exist_ok=True)
        record = read_stage_record(folder, key)
        if record is not None:
            say(f"✓ {stage}: from the shared cache ({folder.name}/, built in {record['seconds']:.1f}s elsewhere)")
            return StageResult(stage, folder, key, 0.0, True, record["details"])
    if record is not None:
        say(f"✓ {stage}: cached ({folder.name}/, built in {record['seconds']:.1f}s)")
        return StageResult(stage, folder, key, 0.0, True, record["details"])
    say(f"▶ {stage} → {folder.name}/")
    start = time.perf_counter()
    trim_heap()
    with atomic_dir(folder) as scratch:
        with StagePeak() as peak:
            details = produce(scratch)
        seconds = time.perf_counter() - start
        details["peak_rss_mb"] = max(peak.mb or 0, details.get("child_peak_rss_mb") or 0) or None  # the stage's own
        record = {
            "stage": stage,
            "key": key,
            "seconds": round(seconds, 2),
            "details": details,
            "files": {MODEL_FILE: sha256_file(scratch / MODEL_FILE)},
        }
        (scratch / STAGE_FILE).write_text(json.dumps(record, indent=2))
    say(f"  {stage}: {seconds:.1f}s, peak RSS {details['peak_rss_mb'] or '?'} MB")
    trim_heap()
    _offer_to_shared_cache(stage, key, folder)
    return StageResult(stage, folder, key, seconds, False, details)


def _shared_entry(stage: str, key: str) -> Path | None:
    root = os.environ.get("EDGEQ_SHARED_CACHE")
    entry = Path(root) / stage / key if root else None
    return entry if entry is not None and read_stage_record(entry, key) is not None else None


def _offer_to_shared_cache(stage: str, key: str, folder: Path) -> None:
    """Copy a finished stage folder into the shared cache under its key (content-addressed; first writer wins)."""
    root = os.environ.get("EDGEQ_SHARED_CACHE")
    if not root or (Path(root) / stage / key).exists():
        return
    target = Path(root) / stage / key
    scratch = target.parent / f".tmp-{key}-{os.getpid()}"
    try:
        shutil.copytree(folder, scratch)
        scratch.rename(target)
    except OSError:  # another build published it first, or the folder is not writable: the cache is an optimisation
        shutil.rmtree(scratch, ignore_errors=True)


def read_stage_record(folder: Path, key: str) -> dict | None:
    try:
        record = json.loads((folder / STAGE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if record.get("key") != key:
        return None
    for name, sha in record.get("files", {}).items():
        if not (folder / name).is_file() or sha256_file(folder / name) != sha:
            return None
    return record


def tool_versions() -> dict[str, str | None]:
    return {"edgeq-source": edgeq_source_hash(), **installed_versions(TOOLS)}


def installed_versions(tools) -> dict[str, str | None]:
    """Each package's installed version (None: not installed)."""
    versions = {}
    for tool in tools:
        try:
            versions[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            versions[tool] = None
    return versions


@cache
def edgeq_source_hash() -> str:
    """One hash over edgeq's own Python files: an edited checkout (same version number) invalidates the cache."""
    package = Path(__file__).resolve().parent
    hasher = hashlib.sha256()
    for file in sorted(package.rglob("*.py")):
        hasher.update(str(file.relative_to(package)).encode())
        hasher.update(file.read_bytes())
    return hasher.hexdigest()


def digest(material: dict) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()
