"""Run the reference and its candidates side by side on one device and report fidelity, latency, placement.

The FP32 reference always runs on this machine's CPU EP: it is the ground truth. Candidates run on the device's
runtime (its EP, or a declared CPU stand-in). A device that cannot run float models (an NPU) validates only the
quantized candidates. On a CPU device all models run interleaved, batch by batch, so that a latency ratio to
FP32 is measured under the same machine load; elsewhere a ratio to the host's FP32 would mean nothing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgeq.devices import DeviceProfile
from edgeq.progress import track
from edgeq.text import TextEncoder, batches, feed_for, task_vectors
from edgeq.validate.metrics import compare, judge
from edgeq.validate.sessions import CPU_EP, environment, host_cpu, make_session, placement, runtime_for


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
    """One report.json validation entry per model validated on `device` (the reference included, as the
    baseline, when the device runs float models). `thresholds` maps a model name to its limits."""
    from edgeq.artifact import is_quantized

    runtime = runtime_for(device)
    rows = [n for n in models if (device.runs_float or (n != reference and is_quantized(models[n])))]
    sessions = {name: make_session(models[name], device, spinning=False, runtime=runtime) for name in rows}
    comparable = runtime.provider == CPU_EP and runtime.mode == "on-host" and reference in sessions
    reference_session = sessions[reference] if comparable else make_session(models[reference], host_cpu(device))
    feeds = [encoder.encode(b) for b in batches(texts, batch_size) if len(b) == batch_size] or [encoder.encode(texts[:batch_size])]
    for session in sessions.values():
        for _ in range(warmup):
            session.run(None, feed_for(session.get_inputs(), feeds[0]))
    vectors: dict[str, list[np.ndarray]] = {name: [] for name in rows}
    truth: list[np.ndarray] = []  # the reference's vectors on the host CPU
    timings: dict[str, list[float]] = {name: [] for name in rows}
    for encoded in track(feeds, f"validating on {device.id}", total=len(feeds)):
        mask = encoded["attention_mask"]
        for name, session in sessions.items():
            feed = feed_for(session.get_inputs(), encoded)
            start = time.perf_counter()
            output = session.run(None, feed)[0]
            timings[name].append((time.perf_counter() - start) * 1000)
            vectors[name].append(task_vectors(output, mask, task))
        if comparable:
            truth.append(vectors[reference][-1])
        else:
            output = reference_session.run(None, feed_for(reference_session.get_inputs(), encoded))[0]
            truth.append(task_vectors(output, mask, task))
    ref_vectors = np.concatenate(truth)
    ref_p50 = float(np.percentile(timings[reference], 50)) if comparable else None
    env = {**environment(), "threads": device.threads, "intra_op_spinning": False}
    results = []
    for name in rows:
        where = placement(models[name], runtime, feed_for(sessions[name].get_inputs(), feeds[0]))
        metrics = compare(ref_vectors, np.concatenate(vectors[name]), task == "text-classification")
        limits = (thresholds or {}).get(name) or {}
        failures = judge(metrics, limits)
        compliance = None
        if device.quantization.power_of_two_scales and name != reference:
            import onnx

            from edgeq.quantize.pow2 import dpu_compliance

            compliance = dpu_compliance(onnx.load(str(models[name])), device.quantization.supported_ops)
            if compliance["violations"]:
                failures.append(f"{len(compliance['violations'])} {device.device_class.upper()} rule violations")
        latency = _latency(timings[name])
        entry = {
            "artifact": name,
            "device": device.id,
            "provider": runtime.provider,
            "mode": runtime.mode,
            "placement": where["nodes"],
            "partitions": where["partitions"],
            "fallback_nodes": sum(n for ep, n in where["nodes"].items() if ep != runtime.provider),
            "environment": env,
            "samples": int(len(ref_vectors)),
            "batch_size": batch_size,
            "metrics": metrics,
            "latency_ms": latency,
            "latency_ratio_to_reference": round(latency["p50"] / ref_p50, 3) if ref_p50 else None,
            "reference": reference,
            "thresholds": limits,
            "passed": not failures,
            "failures": failures,
        }
        if runtime.note:
            entry["note"] = runtime.note
        if runtime.mode != "on-host":
            entry["latency_note"] = f"measured on {runtime.provider} on this {env['machine']} host, not on the device"
        if compliance is not None:
            entry["compliance"] = compliance
        if device.coverage:
            from edgeq.validate.coverage import coverage_estimate

            entry["coverage"] = coverage_estimate(models[name], device.coverage)
        results.append(entry)
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
