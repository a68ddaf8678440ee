"""Run one function in a child process, for work whose memory the build must not keep: the export imports PyTorch
and loads the model twice (to write the graph and to check it), and a process does not hand all of that back to
the system when the work is done. The child's peak is its own; its result or its error comes back whole."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_isolated(function: Callable[..., T], *args) -> T:
    """`function(*args)` in a fresh (spawned) interpreter; its return value, or its exception re-raised here.
    `function` and its arguments must be picklable (a module-level function and plain data)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from edgeq.buildlog import active_log, log_to
    from edgeq.errors import StageError

    with ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=log_to, initargs=(active_log(),)
    ) as pool:  # the child logs to the build's log file too
        try:
            return pool.submit(function, *args).result()
        except BrokenProcessPool:
            raise StageError(
                f"the child process running {function.__name__} died (out of memory?)",
                "Check `dmesg` for the OOM killer, or free memory",
            ) from None
