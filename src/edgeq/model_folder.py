"""A model folder's own files, read in one place: config.json (architecture, labels, shapes)."""

from __future__ import annotations

import json
from pathlib import Path

from edgeq.errors import ModelError


def config_of(folder: str | Path, required: bool = False, hint: str | None = None) -> dict:
    """config.json of a model folder as a dict; {} when it is missing or unreadable, or (`required`) a ModelError."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        if required:
            raise ModelError(f"no readable config.json in '{folder}'", hint) from None
        return {}
    return config if isinstance(config, dict) else {}
