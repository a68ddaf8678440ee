"""Progress and status lines on stderr (stdout stays clean for --json). Quiet when EDGEQ_QUIET is set."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")
console = Console(stderr=True, highlight=False)


def quiet() -> bool:
    return bool(os.environ.get("EDGEQ_QUIET"))


def say(message: str) -> None:
    if not quiet():
        console.print(message)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (on a terminal), and a closing line saying how many items were done."""
    if quiet() or not console.is_terminal:
        yield from items
        return
    columns = (TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
