"""Memory: what this machine has available (edgeq.build_cost refuses a build whose estimated peak is over it), and
what a build's stages used (sampled per stage, the process's high-water mark)."""

from __future__ import annotations

from pathlib import Path

from edgeq.errors import EdgeqError


class MemoryHeadroomError(EdgeqError):
    """The build would need more memory than this machine has available."""


def available_bytes() -> int | None:
    """MemAvailable, capped by a cgroup's memory.max when one is set."""
    found = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
    except OSError:
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            found = min(found or int(limit), int(limit))
    except OSError:
        pass
    return found


class StagePeak:
    """The highest resident memory of this process while a stage runs, sampled every 50 ms by a thread (VmRSS).
    The process's own high-water mark (VmHWM) cannot be reset without also resetting what `/usr/bin/time -v`
    reports, so a stage's peak is sampled; a spike shorter than a sample can be missed."""

    def __init__(self, interval: float = 0.05):
        import threading

        self.interval, self.peak_kb = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> StagePeak:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, _status_kb("VmRSS") or 0)

    @property
    def mb(self) -> float | None:
        return round(self.peak_kb / 1024, 1) if self.peak_kb else None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, _status_kb("VmRSS") or 0)
            self._stop.wait(self.interval)


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float | None:
    """This process's resident-memory high-water mark (VmHWM) since it started."""
    found = _status_kb("VmHWM")
    return round(found / 1024, 1) if found else None


def trim_heap() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim) after a stage: the export's PyTorch model
    and a stage's sessions leave hundreds of MB of freed memory the next stage's peak would otherwise sit on."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
