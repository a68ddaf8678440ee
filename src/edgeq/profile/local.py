"""Profile a model in this process on the device's execution provider (transport `local`)."""

from __future__ import annotations

import json
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgeq.artifact import load_onnx
from edgeq.devices import DeviceProfile
from edgeq.profile.inputs import synthetic_feed, vocab_size_near
from edgeq.progress import track
from edgeq.validate.sessions import Runtime, environment, make_session, placement_from_trace, runtime_for


def profile_local(model_path: Path, device: DeviceProfile, runs: int = 50, warmup: int = 5,
                  batch_size: int = 1, sequence_length: int = 128) -> dict:  # fmt: skip
    """Load time, first run, latency distribution over `runs`, peak RSS, per-op time and placement."""
    load_onnx(model_path, load_weights=False)  # a clear error for a missing or non-ONNX file
    runtime = runtime_for(device)
    start = time.perf_counter()
    session = make_session(model_path, device, runtime=runtime)
    load_ms = (time.perf_counter() - start) * 1000
    feed = synthetic_feed(session.get_inputs(), batch_size, sequence_length, vocab_size_near(model_path))
    start = time.perf_counter()
    session.run(None, feed)
    first_run_ms = (time.perf_counter() - start) * 1000
    for _ in range(warmup):
        session.run(None, feed)
    timings = []
    for _ in track(range(runs), f"profiling on {device.id}", total=runs):
        start = time.perf_counter()
        session.run(None, feed)
        timings.append((time.perf_counter() - start) * 1000)
    ops, where = op_breakdown(model_path, runtime, feed)
    values = np.array(timings)
    return {
        "model": str(model_path),
        "device": device.id,
        "transport": "local",
        "mode": runtime.mode,
        "provider": runtime.provider,
        "runs": runs,
        "warmup": warmup,
        "batch_size": batch_size,
        "sequence_length": sequence_length,
        "latency_ms": {name: round(float(fn(values)), 3) for name, fn in STATS.items()},
        "throughput_per_s": round(batch_size * 1000 / float(values.mean()), 2),
        "load_ms": round(load_ms, 2),
        "first_run_ms": round(first_run_ms, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "ops": ops,
        "placement": where["nodes"],
        "partitions": where["partitions"],
        "fallback_nodes": sum(n for ep, n in where["nodes"].items() if ep != runtime.provider),
        "environment": {**environment(), "threads": device.threads},
    }


STATS = {
    "min": np.min,
    "p50": lambda v: np.percentile(v, 50),
    "p90": lambda v: np.percentile(v, 90),
    "p99": lambda v: np.percentile(v, 99),
    "max": np.max,
    "mean": np.mean,
}


def op_breakdown(model_path: Path, runtime: Runtime, feed: dict, runs: int = 3):
    """Per-op-type time (ms per inference, share of the total) and placement, from the profiler."""
    with tempfile.TemporaryDirectory(prefix="edgeq-profile-") as tmp:
        session = make_session(model_path, runtime.device, profile_dir=Path(tmp), runtime=runtime)
        for _ in range(runs):
            session.run(None, feed)
        trace = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for event in trace:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[args.get("op_name", "?")] += event.get("dur", 0) / 1000 / runs
    total = sum(per_op.values()) or 1.0
    ops = [{"op_type": op, "ms": round(ms, 4), "share": round(ms / total, 4)}
           for op, ms in sorted(per_op.items(), key=lambda item: -item[1])]  # fmt: skip
    return ops, placement_from_trace(trace, model_path, runtime)
