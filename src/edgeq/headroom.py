"""Memory headroom, known before the kernel knows it: a language model's build estimates its peak RSS from the model's
config.json and refuses, in one line, when this machine cannot give it that much (an OOM kill leaves no message).

The estimate is a fit to measured builds (`/usr/bin/time -v`, the whole `edgeq build`): a fixed part (Python,
torch, onnxruntime), a multiple of the FP32 export's bytes (the export itself, the FP32 model in memory, the
sessions of the search and of validation, the candidates), and a few batches of logits, fitted on SmolLM2-135M
(652 MB FP32, 5.9 GB peak) and a tiny decoder with a 262,144-token vocabulary (3.1 GB peak), 2-core x86-64. It is
printed at the start of the build."""

from __future__ import annotations

import os
from pathlib import Path

from edgeq.errors import EdgeqError

FIXED_BYTES = 1.6e9  # Python, torch, transformers, onnxruntime and their arenas
PER_FP32_BYTE = 7.0  # peak bytes per byte of the FP32 export (fit: SmolLM2 135M, a 262k-vocabulary tiny decoder)
LOGIT_COPIES = 8  # batches of logits alive at once (reference, candidate, their log-softmax in float64)


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


def estimated_peak_bytes(config: dict, sequence_length: int) -> int | None:
    """The estimated peak RSS of building a decoder of this config.json, or None when it is not a decoder."""
    from edgeq.plan import model_shape

    try:
        shape = model_shape(config)
    except (KeyError, TypeError, ValueError):
        return None
    tied_head = shape.vocab * shape.hidden if shape.tied else 0
    fp32 = 4 * (shape.parameters + tied_head)  # the export writes a tied head as its own matrix
    logits = LOGIT_COPIES * shape.vocab * sequence_length * 8
    return int(FIXED_BYTES + PER_FP32_BYTE * fp32 + logits)


def check_headroom(config: dict, sequence_length: int, say) -> None:
    """Say the estimate; refuse when it is over what is available (EDGEQ_MEMORY_CHECK=0 turns the refusal off)."""
    peak, available = estimated_peak_bytes(config, sequence_length), available_bytes()
    if peak is None or available is None:
        return
    say(f"  memory: about {peak / 2**30:.1f} GiB at peak (an estimate from config.json), {available / 2**30:.1f} GiB "
        "available")  # fmt: skip
    if peak > available and os.environ.get("EDGEQ_MEMORY_CHECK", "1") != "0":
        raise MemoryHeadroomError(
            f"this build needs about {peak / 2**30:.1f} GiB at peak and this machine has {available / 2**30:.1f} GiB "
            "available",
            "Free memory, lower validation.samples and validation.sequence_length, or set EDGEQ_MEMORY_CHECK=0 to try anyway",
        )


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
