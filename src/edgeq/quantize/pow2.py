"""Power-of-two scales for a DPU (AMD/Xilinx Vitis AI XINT8), and the check that a model follows the DPU's rules.

A static QDQ model (symmetric INT8, per-tensor) is rewritten so every scale is 2^e: for weights and biases the
exponent that minimises the quantization MSE of the float values (re-quantizing them), for activations the one
that minimises MSE over the activation values the calibration texts produce. The exponent that merely avoids
overflow (ceil) clips nothing but wastes up to half the range; the MSE choice often takes the one below."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from edgeq.graph import producers as producer_map
from edgeq.graph import readers

QMIN, QMAX = -128, 127
QDQ = ("QuantizeLinear", "DequantizeLinear")


def best_exponent(values: np.ndarray) -> int:
    """The exponent e minimising the MSE of int8 symmetric quantization with scale 2^e."""
    values = values.astype(np.float64).ravel()
    peak = float(np.abs(values).max()) if values.size else 0.0
    if peak == 0:
        return 0
    ceiling = math.ceil(math.log2(peak / QMAX))  # the smallest exponent that never overflows
    best, best_error = ceiling, math.inf
    for exponent in range(ceiling - 3, ceiling + 1):
        scale = 2.0**exponent
        error = float(((np.clip(np.round(values / scale), QMIN, QMAX) * scale - values) ** 2).mean())
        if error < best_error:
            best, best_error = exponent, error
    return best


def power_of_two_scales(
    model: onnx.ModelProto, float_model: onnx.ModelProto, activations: dict[str, np.ndarray]
) -> dict[str, int]:
    """Rewrite, in place, every Q/DQ scale of `model` to a power of two. `float_model` holds the float weights
    (the model before quantization); `activations` holds sample values of activation tensors. Returns counts."""
    inits = {t.name: t for t in model.graph.initializer}
    float_inits = {t.name: t for t in float_model.graph.initializer}
    done = {"weights": 0, "activations": 0}
    for scale_name, (source, quantized_init) in _scale_sources(model, inits).items():
        if quantized_init is not None:  # a weight or bias stored already quantized: re-quantize from its float values
            original = float_inits.get(quantized_init.removesuffix("_quantized"))
            if original is None:
                continue
            weights = numpy_helper.to_array(original)
            exponent = best_exponent(weights)
            q = np.clip(np.round(weights / 2.0**exponent), QMIN, QMAX)
            old = inits[quantized_init]
            old.CopyFrom(numpy_helper.from_array(q.astype(numpy_helper.to_array(old).dtype), old.name))
            done["weights"] += 1
        elif source in activations:
            exponent = best_exponent(activations[source])
            done["activations"] += 1
        else:
            continue
        scale = inits[scale_name]
        scale.CopyFrom(
            numpy_helper.from_array(
                np.asarray(2.0**exponent, dtype=np.float32).reshape(numpy_helper.to_array(scale).shape), scale_name
            )
        )
    return done


def _scale_sources(model: onnx.ModelProto, inits: dict) -> dict[str, tuple[str, str | None]]:
    """Scale initializer -> (the float tensor it quantizes, the pre-quantized initializer if it is a weight)."""
    sources: dict[str, tuple[str, str | None]] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            sources.setdefault(node.input[1], (node.input[0], None))
        elif node.op_type == "DequantizeLinear" and node.input[0] in inits:
            sources[node.input[1]] = (node.input[0], node.input[0])
    return sources


def activation_tensors(model: onnx.ModelProto) -> list[str]:
    """The float tensors the model's QuantizeLinear nodes quantize at run time."""
    inits = {t.name for t in model.graph.initializer}
    return sorted({n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits})


def dpu_compliance(model: onnx.ModelProto, supported_ops: list[str] | None) -> dict:
    """Every Q/DQ and node that breaks a DPU rule, and the nodes left to the CPU.

    Checked: power-of-two scales, zero point 0, 8-bit, per-tensor; quantized nodes of op types the DPU runs;
    the positions (−log2 scale) of an Add's two inputs differ by at most 7. Not checked: the shift_cut /
    shift_bias clamps, which depend on the DPU compiler's layer fusion."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = producer_map(model)
    cpu_side = _cpu_side_weights(model, inits, producers)
    violations = []
    for node in model.graph.node:
        if node.op_type not in QDQ or node.name in cpu_side:
            continue
        scale = inits.get(node.input[1])
        zero = inits.get(node.input[2]) if len(node.input) > 2 else None
        if scale is None:
            violations.append(f"{node.name}: scale is not a constant")
            continue
        if scale.size != 1:
            violations.append(f"{node.name}: per-channel scale ({scale.size} values); the DPU is per-tensor")
        if not all(_is_power_of_two(float(v)) for v in scale.ravel()):
            violations.append(f"{node.name}: scale {float(scale.ravel()[0]):.6g} is not a power of two")
        if zero is not None and (zero.dtype.itemsize != 1 or np.any(zero != 0)):
            violations.append(f"{node.name}: zero point {zero.ravel()[:1]} {zero.dtype} (needs int8 0)")
    quantized, on_cpu = [], {}
    for node in model.graph.node:
        if node.op_type in QDQ:
            continue
        fed_by_dq = any(
            producers.get(i) is not None
            and producers[i].op_type == "DequantizeLinear"
            and producers[i].name not in cpu_side
            for i in node.input
        )
        if fed_by_dq:
            quantized.append(node)
            if supported_ops is not None and node.op_type not in supported_ops:
                violations.append(f"{node.name}: {node.op_type} is quantized but the DPU does not run it")
        else:
            on_cpu[node.op_type] = on_cpu.get(node.op_type, 0) + 1
    violations += _add_position_violations(model, inits, producers)
    return {
        "violations": violations,
        "dpu_nodes": len(quantized),
        "cpu_nodes": dict(sorted(on_cpu.items(), key=lambda kv: -kv[1])),
        "not_checked": [
            "shift_cut / shift_bias clamps (decided by the DPU compiler's fusion)",
            "Concat/Pool/Pad/Slice sharing one scale",
            "Sigmoid turned into HardSigmoid",
        ],
    }


def _cpu_side_weights(model, inits, producers) -> set[str]:
    """DequantizeLinear nodes of INT8 weights that only feed nodes with no quantized activation input: weight-only
    INT8 on the CPU side of a DPU model (the DPU never sees them, so its rules do not apply)."""

    def activation_dq(name: str) -> bool:
        node = producers.get(name)
        return node is not None and node.op_type == "DequantizeLinear" and node.input[0] not in inits

    consumers = readers(model)
    return {
        n.name
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and not any(activation_dq(i) for c in consumers.get(n.output[0], []) for i in c.input)
    }


def _add_position_violations(model, inits, producers) -> list[str]:
    found = []
    for node in model.graph.node:
        if node.op_type != "Add":
            continue
        scales = [
            inits.get(producers[i].input[1])
            for i in node.input
            if i in producers and producers[i].op_type == "DequantizeLinear"
        ]
        positions = [
            -math.log2(float(s.ravel()[0])) for s in scales if s is not None and s.size == 1 and s.ravel()[0] > 0
        ]
        if len(positions) == 2 and abs(positions[0] - positions[1]) > 7:
            found.append(f"{node.name}: Add input positions differ by {abs(positions[0] - positions[1]):.0f} (> 7)")
    return found


def _is_power_of_two(value: float) -> bool:
    return value > 0 and math.log2(value).is_integer()
