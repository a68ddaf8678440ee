"""Atomic writes: a file or a folder appears whole or not at all, even when the build is killed."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty scratch folder beside `target`; on success it replaces `target` in one rename."""
    scratch = target.parent / f"{TMP_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if target.exists():
        retired = target.parent / f"{TMP_PREFIX}old-{target.name}-{uuid.uuid4().hex[:8]}"
        target.rename(retired)
        scratch.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        scratch.rename(target)


def write_text(path: Path, text: str) -> None:
    scratch = path.parent / f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
    scratch.write_text(text, encoding="utf-8")
    os.replace(scratch, path)


def remove_leftovers(folder: Path) -> None:
    """Scratch files and folders of builds that were killed before they could clean up."""
    for leftover in folder.glob(f"{TMP_PREFIX}*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
