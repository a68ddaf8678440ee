"""Run the reference and its candidates side by side on one device and report fidelity, latency, placement.

The FP32 reference always runs on this machine's CPU EP: it is the ground truth. Candidates run on the device's
runtime (its EP, or a declared CPU stand-in). A device that cannot run float models (an NPU) validates only the
quantized candidates. On a CPU device all models run interleaved, batch by batch, so that a latency ratio to
FP32 is measured under the same machine load; elsewhere a ratio to the host's FP32 would mean nothing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgeq.feeds import ShapeData, run_batch, shape_data
from edgeq.progress import track
from edgeq.targets.host import environment
from edgeq.targets.placement import placement, placement_from_trace
from edgeq.targets.profiles import DeviceProfile
from edgeq.targets.runtime import CPU_EP
from edgeq.targets.target import Target
from edgeq.tasks.judge import judge, worst_case


def validate_models(
    models: dict[str, Path],
    reference: str,
    target: Target,
    samples: list,
    inputs,
    task,
    shapes: list[tuple[int, int]] | None = None,
    warmup: int = 3,
    thresholds: dict[str, dict[str, float]] | None = None,
    whole_batches_only: bool = False,
    follow_ups: int | None = None,
) -> list[dict]:
    """One report.json validation entry per model validated on `target` (the reference included, as the
    baseline, when the device runs float models here). `task` turns `samples` into batches with `inputs` (its
    input maker) and outputs into metrics. `shapes` are (batch size, most tokens a text), each measured on its
    own; an entry's `metrics` are the worst case over them. `thresholds` maps a model name to its limits;
    `follow_ups` bounds how many samples get the task's follow-ups (a language model's greedy continuations)."""
    from edgeq.artifact import is_quantized

    device, runtime = target.profile, target.runtime
    float_rows = device.runs_float and not runtime.in_runner  # an emulated arm64 is slow: quantized models only
    rows = [n for n in models if float_rows or (n != reference and is_quantized(models[n]))]
    data = shape_data(task, samples, inputs, shapes or [(1, inputs.sequence_length)], whole_batches_only, follow_ups)
    measured = [_measure_shape(models, rows, reference, target, task, at, warmup, i == 0) for i, at in enumerate(data)]
    first = measured[0]
    env = first["runs"][rows[0]].get("environment") or {
        **environment(),
        "threads": device.threads,
        "intra_op_spinning": False,
    }
    batch_size = (shapes or [(1, 0)])[0][0]
    return [_entry(name, models[name], measured, reference, target, task, thresholds, env, batch_size) for name in rows]


DEPARTURE_MARGIN = 0.1  # a device departs when its fidelity loss is over the simulation's by more than a tenth
VERSUS_HOST_METRICS = ("cosine_min", "cosine_mean", "max_abs_error", "kl_divergence_mean", "next_token_top1_agreement")


def _entry(name, path, measured, reference, target: Target, task, thresholds, env, batch_size) -> dict:
    """The validation entry of one model: its metrics (worst over shapes) judged, where it ran, and the notes."""
    device, runtime, first = target.profile, target.runtime, measured[0]
    per_shape = [_shape_entry(m, name, reference, task) for m in measured]
    metrics, worst = worst_case([p["metrics"] for p in per_shape], [p["shape"] for p in per_shape])
    limits = (thresholds or {}).get(name) or {}
    compliance = _compliance(path, device) if name != reference else None
    failures = _failures(judge(metrics, limits), worst, per_shape[0]["shape"], compliance, device)
    where = first["runs"][name]["placement"]
    entry = {
        "artifact": name,
        "device": device.id,
        "provider": runtime.provider,
        "mode": runtime.mode,
        "placement": where["nodes"],
        "partitions": where["partitions"],
        "fallback_nodes": sum(n for ep, n in where["nodes"].items() if ep != runtime.provider),
        "environment": env,
        "samples": per_shape[0]["samples"],
        "batch_size": batch_size,
        "metrics": metrics,
        "worst_shape": worst,
        "latency_ms": per_shape[0]["latency_ms"],
        "latency_ratio_to_reference": per_shape[0]["latency_ratio_to_reference"],
        "shapes": per_shape,
        "reference": reference,
        "thresholds": limits,
        "passed": not failures,
        "failures": failures,
        **_runtime_notes(runtime),
    }
    if compliance is not None:
        entry["compliance"] = compliance
    if "decode_placement" in first["runs"][name]:
        decode = first["runs"][name]["decode_placement"]
        entry["decode_graph"] = {
            "placement": decode["nodes"],
            "partitions": decode["partitions"],
            "fallback_nodes": sum(n for ep, n in decode["nodes"].items() if ep != runtime.provider),
        }
    if "simulation" in first["runs"][name]:
        entry["simulation"] = _simulation(task, first, name, per_shape[0]["metrics"])
    if runtime.in_runner:  # the same model on this host's CPU: how far apart the two platforms' kernels are
        data = first["data"]
        samples = [s for batch in data.batches for s in batch.samples]
        apart = task.metrics(*first["runs"][name]["versus_host"], samples, data.inputs)
        entry["versus_host_cpu"] = {k: v for k, v in apart.items() if k in VERSUS_HOST_METRICS}
    if device.coverage:
        from edgeq.targets.coverage import coverage_estimate

        entry["coverage"] = coverage_estimate(path, device.coverage)
    return entry


def _simulation(task, first: dict, name: str, metrics: dict) -> dict:
    """The same model on this host's CPU EP (the simulation the quantizer calibrated against) at the first shape,
    beside the device's numbers: whether the device loses more than the simulation says, and by how much."""
    data = first["data"]
    samples = [s for batch in data.batches for s in batch.samples]
    simulated = task.metrics(first["truth"], first["runs"][name]["simulation"], samples, data.inputs)
    device_loss, simulation_loss = task.fidelity_loss(metrics), task.fidelity_loss(simulated)
    section = {"provider": CPU_EP, "shape": data.label, "metrics": simulated}
    if device_loss is not None and simulation_loss is not None:
        section["device_loss"], section["simulation_loss"] = device_loss, simulation_loss
        section["departs"] = device_loss > simulation_loss * (1 + DEPARTURE_MARGIN)
    return section


def _failures(broken: list[str], worst: dict, first_shape: str, compliance: dict | None, device) -> list[str]:
    """The thresholds broken, each with the shape it broke at, and a DPU's rule violations."""
    failures = [f"{failure} (at {worst.get(failure.split()[0], first_shape)})" for failure in broken]
    if compliance and compliance["violations"]:
        failures.append(f"{len(compliance['violations'])} {device.device_class.upper()} rule violations")
    return failures


def _runtime_notes(runtime) -> dict:
    """What the entry must say of where it ran: the runtime's note, and that the latency is not the device's."""
    notes = {"note": runtime.note} if runtime.note else {}
    if runtime.mode != "on-host":
        where = "in the stand-in" if runtime.in_runner else "on this host"
        notes["latency_note"] = f"measured on {runtime.provider} {where}, not on the device"
    return notes


def _measure_shape(models, rows, reference, target: Target, task, data: ShapeData, warmup, first) -> dict:
    """Every model of `rows` on the batches of one shape: what the task compares, timings, placement."""
    runtime = target.runtime
    if target.runs_in_stand_in:
        runs, truth = _run_in_device_runner(
            {n: models[n] for n in rows}, models[reference], data, target, task, with_host=first
        )
        comparable = False
    else:
        comparable = runtime.provider == CPU_EP and runtime.mode == "on-host" and reference in rows
        runs, truth = _run_here(
            {n: models[n] for n in rows},
            models[reference],
            data,
            target,
            task,
            warmup,
            comparable,
            reference,
            with_placement=first,
        )
    return {
        "data": data,
        "runs": runs,
        "truth": truth,
        "items": {name: runs[name]["items"] for name in rows},
        "comparable": comparable,
    }


def _shape_entry(measured: dict, name: str, reference: str, task) -> dict:
    runs, data = measured["runs"], measured["data"]
    latency = _latency(runs[name]["timings"])
    ref_p50 = float(np.percentile(runs[reference]["timings"], 50)) if measured["comparable"] else None
    samples = [s for batch in data.batches for s in batch.samples]
    entry = {
        "shape": data.label,
        "batch_size": data.batch_size,
        "sequence_length": data.sequence_length,
        "samples": len(measured["truth"]),
        "metrics": task.metrics(
            measured["truth"], measured["items"][name], samples, data.inputs, _followed(runs, name)
        ),
        "latency_ms": latency,
        "latency_ratio_to_reference": round(latency["p50"] / ref_p50, 3) if ref_p50 else None,
    }
    if data.batches[0].mask is not None:
        entry["tokens_mean"] = round(float(np.mean([b.mask.sum(axis=1).mean() for b in data.batches])), 1)
    return entry


def _followed(runs: dict, name: str) -> tuple[list, list] | None:
    if "followed" not in runs.get(name, {}) or "__reference__" not in runs:
        return None
    return runs["__reference__"]["followed"], runs[name]["followed"]


def _run_here(
    models, reference_path, data: ShapeData, target: Target, task, warmup, comparable, reference, with_placement=True
):
    """Every model in this process, interleaved batch by batch; the reference's outputs from the host CPU."""
    sessions = {name: target.session(path, spinning=False) for name, path in models.items()}
    reference_session = sessions[reference] if comparable else target.reference_session(reference_path)
    for (
        session
    ) in sessions.values():  # the recipe's warm-up on the first shape; a warm session needs one run of another
        for _ in range(warmup if with_placement else min(warmup, 1)):
            run_batch(session, data.batches[0])
    runs = {name: {"items": [], "timings": []} for name in models}
    simulations = {}  # the same quantized models on this host's CPU EP, beside the device's (the first shape)
    if with_placement and target.differs_from_simulation:
        simulations = {n: target.reference_session(p, spinning=False) for n, p in models.items() if n != reference}
        for name in simulations:
            runs[name]["simulation"] = []
    truth = []
    for batch in track(data.batches, f"validating on {target.id} {data.label}", total=len(data.batches)):
        produced = {}
        for name, session in sessions.items():
            start = time.perf_counter()
            outputs = run_batch(session, batch)
            runs[name]["timings"].append((time.perf_counter() - start) * 1000)
            produced[name] = task.compared(outputs, batch)
        reference_outputs = (
            produced[reference] if comparable else task.compared(run_batch(reference_session, batch), batch)
        )
        for name in sessions:  # reduced batch by batch: a language model's logits are never held for the data set
            runs[name]["items"] += task.pair(reference_outputs, produced[name], batch)
        for name, session in simulations.items():
            simulated = task.compared(run_batch(session, batch), batch)
            runs[name]["simulation"] += task.pair(reference_outputs, simulated, batch)
        truth += task.summarize(reference_outputs, batch)
    for name, path in models.items() if with_placement else ():
        runs[name]["placement"] = placement(path, target.runtime, data.batches[0])
        if hasattr(data.inputs, "decode_batch") and (path.parent / "decode.onnx").is_file():  # a static pair
            runs[name]["decode_placement"] = placement(
                path.parent / "decode.onnx", target.runtime, data.inputs.decode_batch()
            )
    if with_placement and task.follow_up_samples:  # e.g. greedy continuations: on the first shape only
        for name, session in sessions.items():
            sibling = _opened_once(lambda file, path=models[name]: target.session(path.parent / file, spinning=False))
            runs[name]["followed"] = follow_up(task, session, data, sibling)
        runs["__reference__"] = {
            "followed": runs[reference]["followed"]
            if comparable
            else follow_up(
                task,
                reference_session,
                data,
                _opened_once(lambda file: target.reference_session(reference_path.parent / file)),
            )
        }
    return runs, truth


def _opened_once(open_session):
    """`open_session(file)` remembered per file: a static decoder's decode graph is compiled once for all the
    follow-ups (on the HTP emulator a compile of SmolLM2's decode graph takes about 15 s), not once a prompt."""
    import functools

    return functools.cache(open_session)


def follow_up(task, session, data: ShapeData, sibling=None) -> list:
    """The task's follow-up results (e.g. greedy continuations) for its first `follow_up_samples` samples.
    `sibling(file)` opens another graph of the model's folder on the same runtime (a static decoder's decode.onnx)."""
    found, wanted = [], min(task.follow_up_samples, data.follow_ups or task.follow_up_samples)
    sizes = np.cumsum([len(b.samples) for b in data.batches])
    batches = int(np.searchsorted(sizes, wanted) + 1)  # the batches that hold the samples followed
    for batch in track(data.batches[:batches], f"follow-ups on {data.label}", total=min(batches, len(sizes))):
        if len(found) >= wanted:
            break
        found += task.follow_up(session, batch, data.inputs, sibling)
    return found[:wanted]


def _run_in_device_runner(
    models, reference_path, data: ShapeData, target: Target, task, with_host: bool
) -> tuple[dict, list]:
    """Every model through the device's runner (an arm64 stand-in): what the task compares, paired batch by batch with
    the FP32 reference run on this host's CPU; timings; placement; and (`with_host`) each model on this host's CPU
    beside it. Returns the runs and the reference's stored form."""
    from edgeq.progress import say
    from edgeq.targets.outputs import run_outputs

    batches = data.batches
    say(f"  running {len(models)} model(s) on {len(batches)} inputs in the {target.id} stand-in (slow: emulated)")
    produced = dict(zip(models, run_outputs(list(models.values()), [b.feed for b in batches], target)))
    reference = target.reference_session(reference_path)
    here = {name: target.reference_session(path) for name, path in models.items()} if with_host else {}
    runs = {
        name: {
            "items": [],
            "timings": raw["timings_ms"],
            "environment": {**raw["environment"], "intra_op_spinning": True},
            "placement": placement_from_trace(raw["trace"], models[name], target.runtime),
        }
        for name, raw in produced.items()
    }
    for name in here:
        runs[name]["versus_host"] = ([], [])
    truth = []
    for index, batch in enumerate(batches):
        expected = task.compared(run_batch(reference, batch), batch)
        truth += task.summarize(expected, batch)
        for name, raw in produced.items():
            compared = task.compared(raw["outputs"][index], batch)
            runs[name]["items"] += task.pair(expected, compared, batch)
            if name in here:
                on_host = task.compared(run_batch(here[name], batch), batch)
                runs[name]["versus_host"][0].extend(task.summarize(on_host, batch))
                runs[name]["versus_host"][1].extend(task.pair(on_host, compared, batch))
    return runs, truth


def _compliance(model_path: Path, device: DeviceProfile) -> dict | None:
    if not device.is_dpu:
        return None
    import onnx

    from edgeq.quantize.pow2 import dpu_compliance

    return dpu_compliance(onnx.load(str(model_path)), device.quantization.supported_ops)


def _latency(samples_ms: list[float]) -> dict[str, float]:
    values = np.array(samples_ms)
    return {
        "p50": round(float(np.percentile(values, 50)), 3),
        "p90": round(float(np.percentile(values, 90)), 3),
        "mean": round(float(values.mean()), 3),
        "min": round(float(values.min()), 3),
        "runs": int(len(values)),
    }
