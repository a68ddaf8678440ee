"""Where a model's nodes ran: nodes per execution provider and the EP's partitions, read from onnxruntime's
profiler trace."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

from edgeq.targets.runtime import CPU_EP, Runtime, make_session


def placement(model_path: Path, runtime: Runtime, batch) -> dict:
    """Nodes per execution provider and the EP's partitions, from onnxruntime's profiler trace of one run.

    On the CPU EP the trace names every node onnxruntime ran (after its own graph optimizations). An EP that
    compiles partitions (QNN, NNAPI, ...) shows one fused node per partition, so its count is the model's nodes
    less the nodes the trace saw on the CPU."""
    with tempfile.TemporaryDirectory(prefix="edgeq-placement-") as tmp:
        from edgeq.feeds import run_batch

        session = make_session(model_path, runtime.device, profile_dir=Path(tmp), runtime=runtime)
        run_batch(session, batch)
        trace = json.loads(Path(session.end_profiling()).read_text())
    return placement_from_trace(trace, model_path, runtime)


def placement_from_trace(trace: list[dict], model_path: Path, runtime: Runtime) -> dict:
    counts = nodes_per_provider(trace)
    if runtime.provider == CPU_EP:
        return {"nodes": counts, "partitions": None}
    import onnx

    total = len(onnx.load(str(model_path), load_external_data=False).graph.node)
    on_cpu = counts.get(CPU_EP, 0)
    nodes = {runtime.provider: max(total - on_cpu, 0), **({CPU_EP: on_cpu} if on_cpu else {})}
    return {"nodes": nodes, "partitions": counts.get(runtime.provider, 0)}


def nodes_per_provider(trace: list[dict]) -> dict[str, int]:
    providers: dict[str, str] = {}
    for event in trace:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and "provider" in args:
            node = event["name"].removesuffix("_kernel_time")
            providers[node] = args["provider"]
    return dict(Counter(providers.values()))
