"""Progress and status lines on stderr (stdout stays clean for --json). Quiet when EDGEQ_QUIET is set."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")
console = Console(stderr=True, highlight=False)


def quiet() -> bool:
    return bool(os.environ.get("EDGEQ_QUIET"))


def say(message: str) -> None:
    """A status line on the terminal (unless quiet), and in the build's log file during a build."""
    from edgeq.buildlog import active_log

    if active_log() is not None:
        from rich.text import Text

        logging.getLogger("edgeq").info(Text.from_markup(message).plain)
    if not quiet():
        console.print(message)


LOG_EVERY_SECONDS = 30.0


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar on a terminal; elsewhere (CI, a log file) a line at most every 30 seconds
    saying how far it is, so a long loop is never silent."""
    if quiet():
        yield from items
        return
    if not console.is_terminal:
        yield from _logged(items, description, total)
        return
    columns = (TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def _logged(items: Iterable[T], description: str, total: int | None) -> Iterator[T]:
    started = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= LOG_EVERY_SECONDS:
            last = now
            console.print(f"  {description}: {done}{f' of {total}' if total else ''} after {now - started:.0f} s")
