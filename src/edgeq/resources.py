"""Where edgeq finds its bundled device profiles and recipes: inside the wheel, or in a source checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def bundled_dir(name: str) -> Path:
    """`devices` or `recipes`: the wheel's copy (edgeq/_bundled/NAME) or the checkout's top-level folder."""
    in_wheel = _PACKAGE / "_bundled" / name
    return in_wheel if in_wheel.is_dir() else _PACKAGE.parents[1] / name
