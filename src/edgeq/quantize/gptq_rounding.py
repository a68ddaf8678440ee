"""quantization.weight_rounding: gptq. A static QDQ model's MatMul weights re-rounded by GPTQ on the grid the quantizer
chose (its scales and zero points, per column or per tensor, are kept): each weight's code is chosen so that the
layer's output on the calibration tokens moves least, not the weight itself. Round to nearest leaves 8-bit weights
the largest part of a language model's loss on the HTP (SmolLM2 w8a16: see the README); GPTQ removes most of it at
no cost in bytes or speed, since the codes are the same width and the graph is unchanged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeq.progress import track
from edgeq.quantize.numerics import column_gptq, output_error


@dataclass
class Rounding:
    """One MatMul: the FP32 input tensor and weight, and the QDQ model's codes, scale and zero point names."""

    node: str
    activation: str
    weight: str
    codes: str
    scale: str
    zero: str


def round_matmul_weights(fp32_path: Path, qdq_path: Path, feeds: list[dict]) -> dict:
    """Rewrite qdq_path's MatMul weight codes by GPTQ, with Hessians of each MatMul's input measured by running the
    FP32 model (fp32_path, whose node names the QDQ model keeps) on the calibration feeds. Returns what the
    report says: how many MatMuls, and their summed output error against round to nearest's."""
    fp32 = onnx.load(str(fp32_path))
    model = onnx.load(str(qdq_path))
    jobs = matmul_roundings(fp32, model)
    if not jobs:
        return {"matmuls": 0}
    hessians, tokens = input_hessians(fp32, sorted({j.activation for j in jobs}), feeds)
    weights = {t.name: t for t in fp32.graph.initializer}
    tensors = {t.name: t for t in model.graph.initializer}
    nearest = rounded = 0.0
    for job in track(jobs, "GPTQ rounding of MatMul weights", total=len(jobs)):
        weight = numpy_helper.to_array(weights[job.weight]).astype(np.float64)
        codes = numpy_helper.to_array(tensors[job.codes])
        columns = weight.shape[1]
        scale = np.broadcast_to(numpy_helper.to_array(tensors[job.scale]).reshape(-1), (columns,))
        zero = np.broadcast_to(numpy_helper.to_array(tensors[job.zero]).reshape(-1), (columns,))
        hessian = hessians[job.activation]
        better = column_gptq(weight, hessian, scale, zero, _levels(codes.dtype, zero))
        nearest += output_error(weight, codes, scale, zero, hessian)
        rounded += output_error(weight, better, scale, zero, hessian)
        tensors[job.codes].CopyFrom(numpy_helper.from_array(better.astype(codes.dtype), job.codes))
    del fp32, weights
    onnx.save(model, str(qdq_path))
    return {
        "method": "GPTQ on the quantizer's scales (per MatMul, damping 0.01)",
        "matmuls": len(jobs),
        "calibration_tokens": tokens,
        "output_error_vs_nearest": round(rounded / nearest, 4) if nearest else None,
    }


def matmul_roundings(fp32: onnx.ModelProto, model: onnx.ModelProto) -> list[Rounding]:
    """Every QDQ MatMul whose B is a dequantized 2-D initializer with a zero point, not in blocks (not 4-bit),
    paired by node name with its FP32 MatMul."""
    dequantized = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    initializers = {t.name: t for t in model.graph.initializer}
    float_matmuls = {n.name: n for n in fp32.graph.node if n.op_type == "MatMul"}
    float_weights = {t.name for t in fp32.graph.initializer}
    found = []
    for node in model.graph.node:
        dq = dequantized.get(node.input[1]) if node.op_type == "MatMul" else None
        twin = float_matmuls.get(node.name)
        if dq is None or twin is None or twin.input[1] not in float_weights or len(dq.input) < 3:
            continue
        if any(a.name == "block_size" for a in dq.attribute):  # a 4-bit block weight (its zero point: LPBQ's)
            continue
        codes = initializers.get(dq.input[0])
        if codes is None or len(codes.dims) != 2:
            continue
        found.append(Rounding(node.name, twin.input[0], twin.input[1], dq.input[0], dq.input[1], dq.input[2]))
    return found


def input_hessians(fp32: onnx.ModelProto, names: list[str], feeds: list[dict]) -> tuple[dict, int]:
    """E[xxᵀ] of each named tensor's last axis over every token of the feeds (float64), and the token count."""
    import onnxruntime as ort
    from onnx.helper import make_empty_tensor_value_info

    declared = len(fp32.graph.output)
    fp32.graph.output.extend(make_empty_tensor_value_info(n) for n in names)
    try:
        session = ort.InferenceSession(fp32.SerializeToString(), providers=["CPUExecutionProvider"])
    finally:
        del fp32.graph.output[declared:]
    sums: dict[str, np.ndarray] = {}
    tokens = 0
    for feed in track(feeds, "input statistics for GPTQ", total=len(feeds)):
        values = session.run(names, {i.name: feed[i.name] for i in session.get_inputs()})
        for name, value in zip(names, values):
            rows = value.reshape(-1, value.shape[-1]).astype(np.float64)
            sums[name] = sums.get(name, 0.0) + rows.T @ rows
        tokens += int(np.prod(values[0].shape[:-1]))
    return {name: total / max(tokens, 1) for name, total in sums.items()}, tokens


def _levels(dtype: np.dtype, zero: np.ndarray) -> tuple[int, int]:
    """The codes an integer type allows; symmetric INT8 keeps onnxruntime's [-127, 127]."""
    info = np.iinfo(dtype)
    if info.min < 0 and not np.any(zero):
        return -info.max, info.max
    return info.min, info.max
