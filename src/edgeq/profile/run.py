"""Profile models on a device through a transport, and turn the runner's raw numbers into the profile JSON of
DESIGN.md: latency distribution, throughput, load and first-run time, peak RSS, per-op and top-node time,
placement, environment; with several models, interleaved runs and per-pair ratios."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgeq.artifact import load_onnx
from edgeq.errors import DataError
from edgeq.profile.inputs import head_dim_near, synthetic_feed, vocab_size_near
from edgeq.progress import say
from edgeq.targets.outputs import RUNNER
from edgeq.targets.placement import placement_from_trace
from edgeq.targets.target import Target

STANDARD = {"runs": 1024, "min_seconds": 60.0}  # MLPerf Mobile: at least 1024 queries and 60 s
PERCENTILES = {
    "min": np.min,
    "p50": lambda v: np.percentile(v, 50),
    "p90": lambda v: np.percentile(v, 90),
    "p99": lambda v: np.percentile(v, 99),
    "max": np.max,
    "mean": np.mean,
}


class InputSpec:
    def __init__(self, value):
        self.name = value.name
        elem = value.type.tensor_type.elem_type
        self.type = {
            7: "tensor(int64)",
            6: "tensor(int32)",
            1: "tensor(float)",
            10: "tensor(float16)",
            9: "tensor(bool)",
            3: "tensor(int8)",
            2: "tensor(uint8)",
        }.get(elem, "tensor(float)")
        self.shape = [
            d.dim_value if d.dim_value > 0 else (d.dim_param or None) for d in value.type.tensor_type.shape.dim
        ]


@dataclass(frozen=True)
class ProfileSettings:
    """How a profile measures: the runs, the shape of the inputs, and where they come from."""

    runs: int = 100  # at least this many timed runs...
    min_seconds: float = 2.0  # ...and at least this long
    warmup: int = 10
    threads: int | None = None  # intra-op threads; None: the device profile's
    batch_size: int = 1
    sequence_length: int = 128
    inputs: Path | None = None  # an .npz of named inputs; None: the task's example, else synthetic
    timeout: float = 900
    new_tokens: int = 32  # a language model's generated tokens per run


def profile_models(
    models: list[Path], target: Target, settings: ProfileSettings = ProfileSettings(), task=None
) -> dict:
    """One profile per model (a dict for one model; {"profiles", "comparison"} for several). Inputs come from
    `settings.inputs` (an .npz), else from the task's example (with the model folder's tokenizer or image
    processor), else are synthetic, built from the model's input signature."""
    device, transport, runtime = target.profile, target.transport(), target.measured_runtime
    settings = replace(settings, threads=settings.threads or device.threads)
    specs = [_input_specs(m) for m in models]
    with tempfile.TemporaryDirectory(prefix="edgeq-profile-") as tmp:
        job_dir = Path(tmp)
        files = _write_job(job_dir, models, specs, runtime, settings, transport, task)
        where = f"{transport.name}{' ' + transport.address if transport.name == 'ssh' else ''}"
        runs, min_seconds = settings.runs, settings.min_seconds
        say(f"▶ profiling {len(models)} model(s) on {device.id} via {where}: ≥{runs} runs and ≥{min_seconds:g} s")
        transport.run(job_dir, files, settings.timeout)
        result = json.loads((job_dir / "result.json").read_text())
        profiles = [
            _profile(models[i], m, job_dir, runtime, transport, result, settings)
            for i, m in enumerate(result["models"])
        ]
    if len(profiles) == 1:
        return profiles[0]
    return {"profiles": profiles, "comparison": compare(profiles)}


def compare(profiles: list[dict]) -> list[dict]:
    """Each model against the first: ratios of p50, mean and min latency (measured interleaved)."""
    base = profiles[0]["latency_ms"]
    return [
        {
            "model": p["model"],
            "against": profiles[0]["model"],
            **{f"{k}_ratio": round(p["latency_ms"][k] / base[k], 3) for k in ("p50", "mean", "min")},
        }
        for p in profiles[1:]
    ]


def _input_specs(model: Path) -> list[InputSpec]:
    graph = load_onnx(model, load_weights=False).graph
    inits = {t.name for t in graph.initializer}
    return [InputSpec(v) for v in graph.input if v.name not in inits]


def _write_job(job_dir, models, specs, runtime, settings: ProfileSettings, transport, task=None) -> list[str]:
    shutil.copy2(RUNNER, job_dir / "runner.py")
    files, names, input_names = ["runner.py", "job.json"], [], []
    for index, (model, model_specs) in enumerate(zip(models, specs)):
        feed = _feed(model, model_specs, settings, task, tuple(Path(m).parent for m in models))
        np.savez(job_dir / f"inputs_{index}.npz", **feed)
        input_names.append(f"inputs_{index}.npz")
        if transport.copies_models:
            shutil.copy2(model, job_dir / f"model_{index}.onnx")
            names.append(f"model_{index}.onnx")
        else:
            names.append(str(Path(model).resolve()))
    files += input_names + [n for n in names if not n.startswith("/")]
    device = runtime.device
    ep = device.execution_provider
    provider = {
        "name": runtime.provider,
        "options": dict(ep.options) if not runtime.stand_in else {},
        "plugin": ep.plugin if not runtime.stand_in else None,
    }
    job = {
        "models": names,
        "inputs": input_names,
        "runs": settings.runs,
        "min_seconds": settings.min_seconds,
        "max_seconds": max(settings.timeout - 60, settings.min_seconds),
        "warmup": settings.warmup,
        "threads": settings.threads,
        "profile_runs": min(3, settings.runs),
        "provider": provider,
        "session_config": device.session_config if not runtime.stand_in else {},
    }
    if task is not None and task.generates:
        job["generation"] = {"new_tokens": settings.new_tokens}
    (job_dir / "job.json").write_text(json.dumps(job))
    return files


def _feed(
    model: Path, specs: list[InputSpec], settings: ProfileSettings, task=None, companion_dirs: tuple = ()
) -> dict:
    batch_size, sequence_length, inputs = settings.batch_size, settings.sequence_length, settings.inputs
    if inputs is None and task is not None:
        from edgeq.errors import ModelError
        from edgeq.feeds import feed_for

        for folder in (Path(model).parent, *companion_dirs):  # the model's own folder first, then the others'
            try:
                example = task.example_feed(task.inputs(folder, sequence_length, True), batch_size)
                return feed_for(specs, example)
            except ModelError:  # no tokenizer or image processor there
                continue
    if inputs is None:
        return synthetic_feed(specs, batch_size, sequence_length, vocab_size_near(model), head_dim=head_dim_near(model))
    with np.load(inputs) as data:
        missing = [s.name for s in specs if s.name not in data.files]
        if missing:
            raise DataError(
                f"--inputs '{inputs}' has no array for {', '.join(missing)}",
                f"It has: {', '.join(data.files) or 'nothing'}",
            )
        return {s.name: data[s.name] for s in specs}


def _profile(model, raw, job_dir, runtime, transport, result, settings: ProfileSettings) -> dict:
    batch_size, sequence_length = settings.batch_size, settings.sequence_length
    values = np.array(raw["timings_ms"])
    trace = json.loads((job_dir / Path(raw["trace"]).name).read_text())
    ops, top_nodes = _op_times(trace)
    where = placement_from_trace(trace, Path(model), runtime)
    profile = {
        "model": str(model),
        "device": runtime.device.id,
        "transport": transport.name,
        "mode": runtime.mode,
        "provider": runtime.provider,
        "runs": int(len(values)),
        "requested_runs": settings.runs,
        "seconds": round(float(values.sum()) / 1000, 3),
        "warmup": settings.warmup,
        "batch_size": batch_size,
        "sequence_length": sequence_length,
        "latency_ms": {name: round(float(fn(values)), 4) for name, fn in PERCENTILES.items()},
        "throughput_per_s": round(batch_size * 1000 / float(values.mean()), 2),
        "load_ms": round(raw["load_ms"], 2),
        "first_run_ms": round(raw["first_run_ms"], 2),
        "peak_rss_mb": round(result["peak_rss_mb"], 1) if result["peak_rss_mb"] is not None else None,
        "ops": ops,
        "top_nodes": top_nodes,
        "placement": where["nodes"],
        "partitions": where["partitions"],
        "fallback_nodes": sum(n for ep, n in where["nodes"].items() if ep != runtime.provider),
        "environment": result["environment"],
    }
    if "generation" in raw:  # a language model: runs are generations, latency_ms is per decoded token
        generation = raw["generation"]
        ttft = np.array(generation["ttft_ms"])
        profile.update(
            {
                "runs": len(ttft),
                "prompt_tokens": sequence_length,
                "generated_tokens": len(values) // max(len(ttft), 1) + 1,
                "ttft_ms": {
                    "p50": round(float(np.percentile(ttft, 50)), 3),
                    "p90": round(float(np.percentile(ttft, 90)), 3),
                },
                "decode_tokens_per_s": round(float(np.median(generation["decode_tokens_per_s"])), 2),
                "throughput_per_s": round(1000 / float(values.mean()), 2),
                "latency_note": "latency_ms is the time of one decoded token (KV cache); ttft_ms the prompt's pass",
            }
        )
    if transport.name == "ssh":
        profile["host"] = transport.address
    if runtime.mode == "emulated":
        profile["note"] = (
            f"latency of {runtime.provider} on this {result['environment']['machine']} host, "
            f"not of the device. {runtime.note}"
        ).strip()
    return profile


def _op_times(trace: list[dict]) -> tuple[list[dict], list[dict]]:
    """Per-op-type and per-node time (ms per inference over the profiled runs), with their share of the total."""
    per_op: dict[str, float] = defaultdict(float)
    per_node: dict[str, list] = {}
    runs = max(1, sum(1 for e in trace if e.get("name") == "model_run"))
    for event in trace:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            ms = event.get("dur", 0) / 1000 / runs
            per_op[args.get("op_name", "?")] += ms
            node = per_node.setdefault(event["name"].removesuffix("_kernel_time"), [args.get("op_name", "?"), 0.0])
            node[1] += ms
    total = sum(per_op.values()) or 1.0
    ops = [
        {"op_type": op, "ms": round(ms, 4), "share": round(ms / total, 4)}
        for op, ms in sorted(per_op.items(), key=lambda item: -item[1])
    ]
    top = sorted(per_node.items(), key=lambda item: -item[1][1])[:10]
    nodes = [{"node": name, "op_type": op, "ms": round(ms, 4), "share": round(ms / total, 4)} for name, (op, ms) in top]
    return ops, nodes


__all__ = ["STANDARD", "ProfileSettings", "compare", "profile_models"]
