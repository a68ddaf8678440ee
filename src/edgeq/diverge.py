"""Where a quantized model's numbers on a device depart from its simulation (`edgeq diverge`).

A QDQ model says exactly what every activation should be: the CPU EP computes its QuantizeLinear/DequantizeLinear
pairs in float, which is the *simulation* a quantizer calibrates against. A device (the HTP, its emulator, an arm64
board) runs the same model with its own integer kernels. edgeq exposes every quantized activation (each
QuantizeLinear's integer output, read as the device holds it, dequantized here with the tensor's own scale and zero
point) on the device and on the simulation, and the float tensor it quantizes in the FP32 reference, on the same
inputs. Per tensor, in graph order, it reports the SQNR of the device against the simulation and against FP32; the
first tensor whose SQNR against the simulation falls below a threshold is where the device departs."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeq.feeds import feed_for
from edgeq.graph import producers, readers
from edgeq.mixed_precision.activation_types import activation_quantizers, path_name
from edgeq.progress import say
from edgeq.report_contract import Divergence, check
from edgeq.targets.target import Target

# The departure test reads each op's own error (its output on the device against the simulation of that op alone on
# the device's inputs). 30 dB is about the noise that 8-bit quantization adds to a typical activation (33 dB for a
# peak ten times its RMS): an op below it loses on the device, by itself, more than quantizing its output to 8 bits.
# Elementwise ops agree with the simulation to within rounding (70-100 dB on MiniLM's HTP build, measured); the
# HTP's 16-bit matrix products do not (28-46 dB, on v68 and v75 alike).
DEFAULT_THRESHOLD_DB = 30.0


@dataclass(frozen=True)
class Probe:
    """One quantized activation: the float tensor, the QuantizeLinear output the device holds, how to read it."""

    tensor: str  # the float tensor quantized (its name in the FP32 reference, when the reference has it)
    quantized: str  # the QuantizeLinear's integer output, exposed as a graph output
    scale: np.ndarray
    zero_point: np.ndarray
    op: str  # the op that produces the tensor
    node: str
    block: str
    type: str  # the integer type it is held in (uint8, uint16, ...)

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        return (values.astype(np.float64) - self.zero_point.astype(np.float64)) * self.scale.astype(np.float64)


def probes(model: onnx.ModelProto) -> list[Probe]:
    """Every quantized activation of a QDQ model, in graph order (weights and type converts left out)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer, reading = producers(model), readers(model)
    found = []
    for activation in activation_quantizers(model):
        quantize = model.graph.node[activation.quantize_node]
        if len(quantize.input) < 3 or quantize.input[1] not in inits or quantize.input[2] not in inits:
            continue
        zero_point = inits[quantize.input[2]]
        source = producer[activation.tensor]
        found.append(
            Probe(
                activation.tensor,
                quantize.output[0],
                inits[quantize.input[1]],
                zero_point,
                source.op_type,
                path_name(source, quantize, reading),
                activation.island,
                str(zero_point.dtype),
            )
        )
    return found


def local_graph(model: onnx.ModelProto, probe: Probe, held: dict[str, int], index: dict) -> tuple[bytes, list[str]]:
    """The part of the model that computes `probe`'s quantized tensor from the quantized tensors before it (`held`,
    as the device holds them) and the model's inputs: its op with the DequantizeLinear/QuantizeLinear around it,
    and any shape or type-convert nodes in between. `held` maps the quantized tensors to their ONNX element types;
    `index` a node's first output to its place in the graph. Returns the serialized one-op model and its input names."""
    from onnx import helper

    producer = producers(model)
    inits = {t.name: t for t in model.graph.initializer}
    graph_inputs = {i.name: i for i in model.graph.input}
    nodes, inputs, used, pending, seen = [], [], [], [probe.quantized], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in inits:
            used.append(inits[name])
        elif (name in held and name != probe.quantized) or name in graph_inputs or name not in producer:
            inputs.append(name)
        else:
            node = producer[name]
            nodes.append(node)
            pending += [n for n in node.input if n]
    nodes.sort(key=lambda n: index[n.output[0]])
    values = [graph_inputs[n] if n in graph_inputs else helper.make_tensor_value_info(n, held[n], None) for n in inputs]
    graph = helper.make_graph(
        nodes, probe.quantized, values, [helper.make_empty_tensor_value_info(probe.quantized)], used
    )
    local = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return local.SerializeToString(), inputs


def with_outputs(model: onnx.ModelProto, names: list[str]) -> bytes:
    """The model, serialized, with `names` also returned (their types and shapes left to onnxruntime)."""
    from onnx.helper import make_empty_tensor_value_info

    declared = [o.name for o in model.graph.output]
    model.graph.output.extend(make_empty_tensor_value_info(n) for n in names if n not in declared)
    try:
        return model.SerializeToString()
    finally:
        del model.graph.output[len(declared) :]


def diverge(
    model_path: Path,
    target: Target,
    reference_path: Path,
    feeds: list[dict],
    threshold_db: float = DEFAULT_THRESHOLD_DB,
) -> dict:
    """The per-tensor report of `edgeq diverge` (its JSON): the device against the simulation and against FP32."""
    model = onnx.load(str(model_path))
    found = probes(model)
    if not found:
        from edgeq.errors import ModelError

        raise ModelError(
            f"'{model_path}' has no quantized activations to compare (no QuantizeLinear of an activation)",
            "edgeq diverge reads a QDQ model: a static build's int8/ or final/ for a QDQ target",
        )
    exposed = with_outputs(model, [p.quantized for p in found])
    del model
    say(f"▶ diverge: {len(found)} quantized tensors × {len(feeds)} inputs on {target.id} ({target.runtime.mode})")
    host = target.on_host_cpu()
    simulation = host.session(exposed, spinning=False)
    feeds = [feed_for(simulation.get_inputs(), feed) for feed in feeds]  # the model's own input types, everywhere
    simulated = _run(simulation, feeds)
    del simulation
    on_device = _on_target(exposed, target, feeds)
    reference = onnx.load(str(reference_path))
    in_reference = _node_outputs(reference)
    fp32_names = [p.tensor for p in found if p.tensor in in_reference]
    fp32 = _run(host.session(with_outputs(reference, fp32_names), spinning=False), feeds)
    del reference
    tensors = [_compare(p, on_device, simulated, fp32 if p.tensor in in_reference else None) for p in found]
    for entry, local in zip(tensors, _local_comparisons(onnx.load(str(model_path)), found, on_device, feeds, host)):
        entry.update(local)
    below = [t for t in tensors if t["local_sqnr_db"] is not None and t["local_sqnr_db"] < threshold_db]
    runtime = target.measured_runtime if target.remote else target.runtime
    result = {
        "model": str(model_path),
        "reference": str(reference_path),
        "device": target.id,
        "provider": runtime.provider,
        "mode": runtime.mode,
        "samples": len(feeds),
        "threshold_db": threshold_db,
        "tensors": tensors,
        "first_departure": below[0] if below else None,
        "departures": len(below),
        **({"note": runtime.note} if runtime.note else {}),
    }
    check(result, Divergence, "the divergence report")
    return result


def _on_target(exposed: bytes, target: Target, feeds: list[dict]) -> list[dict]:
    """The exposed model's outputs on the target: in this process, or through its device runner."""
    if not (target.runs_in_stand_in or target.remote):
        return _run(target.session(exposed, spinning=False), feeds)
    from edgeq.targets.outputs import run_outputs

    with tempfile.TemporaryDirectory(prefix="edgeq-diverge-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(exposed)
        return run_outputs([path], feeds, target)[0]["outputs"]


def _local_comparisons(model, found: list[Probe], on_device: list[dict], feeds: list[dict], host: Target) -> list[dict]:
    """Per probe: its op's own share of the departure. The op is run again in the simulation (the CPU EP) on the
    device's own inputs, and compared with what the device made of them: what came in already different is not
    counted again."""
    held = {p.quantized: onnx.helper.np_dtype_to_tensor_dtype(p.zero_point.dtype) for p in found}
    index = {node.output[0]: i for i, node in enumerate(model.graph.node)}
    results = []
    for probe in found:
        serialized, inputs = local_graph(model, probe, held, index)
        session = host.session(serialized, spinning=False)
        given = [{n: (run[n] if n in held else feed[n]) for n in inputs} for run, feed in zip(on_device, feeds)]
        again = [probe.dequantize(session.run([probe.quantized], g)[0]) for g in given]
        device = [probe.dequantize(run[probe.quantized]) for run in on_device]
        results.append(
            {"local_sqnr_db": sqnr_db(again, device), "local_steps_apart_max": _steps_apart(device, again, probe.scale)}
        )
    return results


def _run(session, feeds: list[dict]) -> list[dict]:
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(names, feed_for(session.get_inputs(), feed)))) for feed in feeds]


def _node_outputs(model: onnx.ModelProto) -> set[str]:
    return {name for node in model.graph.node for name in node.output}


def _compare(probe: Probe, on_device: list[dict], simulated: list[dict], fp32: list[dict] | None) -> dict:
    device = [probe.dequantize(run[probe.quantized]) for run in on_device]
    simulation = [probe.dequantize(run[probe.quantized]) for run in simulated]
    entry = {
        "name": probe.tensor,
        "op": probe.op,
        "node": probe.node,
        "block": probe.block,
        "type": probe.type,
        "sqnr_vs_simulation_db": sqnr_db(simulation, device),
        "sqnr_vs_fp32_db": None,
        "simulation_sqnr_vs_fp32_db": None,
        "steps_apart_max": _steps_apart(device, simulation, probe.scale),
    }
    if fp32 is not None:
        truth = [run[probe.tensor].astype(np.float64) for run in fp32]
        entry["sqnr_vs_fp32_db"] = sqnr_db(truth, device)
        entry["simulation_sqnr_vs_fp32_db"] = sqnr_db(truth, simulation)
    return entry


def sqnr_db(reference: list[np.ndarray], measured: list[np.ndarray]) -> float | None:
    """10·log10(signal power / noise power) over every input; None when the two are identical (no noise)."""
    signal = sum(float(np.sum(np.square(r))) for r in reference)
    noise = sum(float(np.sum(np.square(r - m))) for r, m in zip(reference, measured))
    if noise == 0:
        return None
    return round(10 * float(np.log10(max(signal, np.finfo(np.float64).tiny) / noise)), 2)


def _steps_apart(device: list[np.ndarray], simulation: list[np.ndarray], scale: np.ndarray) -> int:
    """The largest difference between device and simulation, in quantization steps of the tensor."""
    step = float(np.min(scale)) or 1.0
    return int(round(max((float(np.max(np.abs(d - s))) if d.size else 0.0) for d, s in zip(device, simulation)) / step))
