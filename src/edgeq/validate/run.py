"""Run the reference and its candidates side by side on one device and report fidelity, latency, placement.

Models run interleaved, batch by batch, so that a latency ratio is measured under the same machine load."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgeq.devices import DeviceProfile
from edgeq.progress import track
from edgeq.text import TextEncoder, batches, feed_for, task_vectors
from edgeq.validate.metrics import compare, judge
from edgeq.validate.sessions import environment, make_session, mode_for, placement


def validate_models(
    models: dict[str, Path],
    reference: str,
    device: DeviceProfile,
    texts: list[str],
    encoder: TextEncoder,
    task: str,
    batch_size: int = 1,
    warmup: int = 3,
    thresholds: dict[str, dict[str, float]] | None = None,
) -> list[dict]:
    """One report.json validation entry per model in `models` (the reference included, as the baseline).

    `thresholds` maps a model name to its limits; a model without limits passes by definition."""
    sessions = {name: make_session(path, device, spinning=False) for name, path in models.items()}
    text_batches = [b for b in batches(texts, batch_size) if len(b) == batch_size] or [texts[:batch_size]]
    feeds = []
    for batch in text_batches:
        encoded = encoder.encode(batch)
        feeds.append((encoded["attention_mask"], encoded))
    for name, session in sessions.items():
        for _ in range(warmup):
            session.run(None, feed_for(session.get_inputs(), feeds[0][1]))
    vectors: dict[str, list[np.ndarray]] = {name: [] for name in models}
    timings: dict[str, list[float]] = {name: [] for name in models}
    for mask, encoded in track(feeds, f"validating on {device.id}", total=len(feeds)):
        for name, session in sessions.items():
            feed = feed_for(session.get_inputs(), encoded)
            start = time.perf_counter()
            output = session.run(None, feed)[0]
            timings[name].append((time.perf_counter() - start) * 1000)
            vectors[name].append(task_vectors(output, mask, task))
    ref_vectors = np.concatenate(vectors[reference])
    ref_p50 = float(np.percentile(timings[reference], 50))
    env = environment()
    results = []
    for name, path in models.items():
        first_feed = feed_for(sessions[name].get_inputs(), feeds[0][1])
        where = placement(path, device, first_feed)
        metrics = compare(ref_vectors, np.concatenate(vectors[name]), task == "text-classification")
        limits = (thresholds or {}).get(name) or {}
        failures = judge(metrics, limits)
        latency = _latency(timings[name])
        results.append({
            "artifact": name,
            "device": device.id,
            "provider": device.execution_provider.name,
            "mode": mode_for(device),
            "placement": where,
            "fallback_nodes": sum(n for ep, n in where.items() if ep != device.execution_provider.name),
            "environment": {**env, "threads": device.threads, "intra_op_spinning": False},
            "samples": int(len(ref_vectors)),
            "batch_size": batch_size,
            "metrics": metrics,
            "latency_ms": latency,
            "latency_ratio_to_reference": round(latency["p50"] / ref_p50, 3) if ref_p50 else None,
            "reference": reference,
            "thresholds": limits,
            "passed": not failures,
            "failures": failures,
        })  # fmt: skip
    return results


def _latency(samples_ms: list[float]) -> dict[str, float]:
    values = np.array(samples_ms)
    return {
        "p50": round(float(np.percentile(values, 50)), 3),
        "p90": round(float(np.percentile(values, 90)), 3),
        "mean": round(float(values.mean()), 3),
        "min": round(float(values.min()), 3),
        "runs": int(len(values)),
    }
