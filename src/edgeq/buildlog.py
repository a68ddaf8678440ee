"""The build's log file. Libraries speak through Python's logging: onnxruntime's quantizers (a line for every node
its 4-bit quantizer skips: hundreds for a real model), transformers, optimum, and Python warnings. During a build
all of that goes to `<build folder>/build.log`, with edgeq's own status lines, and never to the terminal, which
shows one line per stage and progress bars. Outside a build (`edgeq quantize`, ...) libraries print errors only."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOG_FILE = "build.log"
FORMAT = "%(asctime)s %(name)s [%(levelname)s] %(message)s"
_active: list[Path] = []


def active_log() -> Path | None:
    """The log file of the build in progress in this process, if any."""
    return _active[-1] if _active else None


@contextmanager
def library_log(path: Path) -> Iterator[Path]:
    """Send every logger and Python warning to `path` (appended) while the block runs. The root logger's other
    handlers (a library's `logging.basicConfig`, which prints to stderr) are set aside and restored afterwards;
    with a handler in place, a library that calls basicConfig later adds none."""
    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    for handler in saved_handlers:
        root.removeHandler(handler)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    _active.append(Path(path))
    try:
        yield Path(path)
    finally:
        _active.pop()
        logging.captureWarnings(False)
        root.removeHandler(handler)
        handler.close()
        root.setLevel(saved_level)
        for old in saved_handlers:
            root.addHandler(old)


def log_to(path: Path | None) -> None:
    """In a child process (edgeq.isolated): log to the parent build's file for the rest of the process."""
    if path is not None:
        library_log(path).__enter__()


def quiet_libraries(*names: str) -> None:
    """Outside a build, the named loggers (and the root logger, when none is named) print errors only; during a
    build they keep logging to build.log."""
    if active_log() is not None:
        return
    for name in names or ("",):
        logging.getLogger(name or None).setLevel(logging.ERROR)


def route_transformers() -> None:
    """transformers keeps its own stderr handler and does not propagate: during a build, send its records to
    build.log instead; outside one, keep errors only. Its progress bars are off either way."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if active_log() is None:
        hf_logging.set_verbosity_error()
        return
    hf_logging.set_verbosity_warning()
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
