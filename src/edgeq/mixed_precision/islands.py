"""Islands: the units that switch precision together, and the node groups that implement each candidate.

An island is one weight-bearing node: a MatMul whose B is a constant matrix, a fused Attention (com.microsoft,
from onnxruntime's transformer fusions: Q, K and V projections in one weight), or a Gather from a constant
table (an embedding). Its candidates, from cheapest to most faithful:
  xint8 static INT8 for a DPU (Vitis AI XINT8): symmetric, per-tensor, power-of-two scales, Q/DQ around the
        MatMul; the activation exponent minimises MSE over the calibration activations. MatMul only.
  int8  dynamic INT8: DynamicQuantizeMatMul with per-channel symmetric INT8 weights (activations quantized at
        run time); for a Gather, INT8 rows with one scale per row.
  int8s dynamic INT8 with SmoothQuant: per input channel, activation outliers are divided out (one Mul) and
        multiplied into the weight rows, s = max|x|^a / max|w|^(1-a), so the run-time activation quantization
        loses less. Same size, one extra elementwise op.
  w8    INT8 weights, FP32 compute: DequantizeLinear(per-channel) -> MatMul. Same size as int8, no
        activation quantization error. MatMul only: onnxruntime folds the weight DequantizeLinear into a
        MatMul at load, but not into a fused Attention, where it would dequantize on every run.
  fp32  the original node.
A Gather reads rows of its table and computes nothing, so its int8 and w8 candidates are the same.
Each candidate is a self-contained replacement (nodes + initializers), so any assignment assembles quickly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

LADDER = ("xint8", "int8", "int8s", "w8", "fp32")
STATIC_RUNGS = ("xint8", "fp32")
MS_DOMAIN = "com.microsoft"


@dataclass
class Candidate:
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    size_bytes: int


@dataclass
class Island:
    name: str  # readable, e.g. encoder.layer.0.attention.self.query
    node_name: str  # the ONNX node it replaces
    kind: str  # matmul | attention | gather
    weight: str  # initializer name
    parameters: int
    candidates: dict[str, Candidate] = field(default_factory=dict)


def readable_name(node_name: str) -> str:
    parts = [p for p in node_name.strip("/").split("/") if p]
    return ".".join(parts[:-1]) if len(parts) > 1 else (parts[0] if parts else node_name)


def find_islands(model: onnx.ModelProto, op_types: list[str] | None = None) -> list[Island]:
    """Weight-bearing MatMul / Gather nodes of the FP32 model, in graph order."""
    wanted = set(op_types or ("MatMul", "Attention", "Gather"))
    inits = {t.name: t for t in model.graph.initializer}
    islands = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and "MatMul" in wanted and node.input[1] in inits:
            weight = inits[node.input[1]]
            if len(weight.dims) == 2 and weight.data_type == onnx.TensorProto.FLOAT:
                islands.append(Island(readable_name(node.name), node.name, "matmul", weight.name, _numel(weight)))
        elif node.op_type == "Attention" and "Attention" in wanted and _plain_attention(node, inits):
            weight = inits[node.input[1]]
            islands.append(Island(readable_name(node.name), node.name, "attention", weight.name, _numel(weight)))
        elif node.op_type == "Gather" and "Gather" in wanted and node.input[0] in inits:
            table = inits[node.input[0]]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if len(table.dims) == 2 and axis == 0 and table.data_type == onnx.TensorProto.FLOAT:
                islands.append(Island(readable_name(node.name), node.name, "gather", table.name, _numel(table)))
    return islands


def build_candidates(model: onnx.ModelProto, islands: list[Island], per_channel: bool = True,
                     activation_absmax: dict[str, np.ndarray] | None = None, alpha: float = 0.8,
                     activation_samples: dict[str, np.ndarray] | None = None) -> None:  # fmt: skip
    """Fill each island's candidates: int8, int8s (when activation statistics are given), w8 and fp32, and
    xint8 (when activation samples are given).

    `activation_absmax` maps a MatMul input tensor to its per-channel max |x| over calibration texts;
    `activation_samples` to sample values of it."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    for island in islands:
        node, weight = nodes[island.node_name], numpy_helper.to_array(inits[island.weight])
        fp32 = Candidate([node], [inits[island.weight]], weight.nbytes)
        if island.kind in ("matmul", "attention"):
            island.candidates = {"int8": _matmul_int8(node, weight, per_channel)}
            if activation_absmax is not None and node.input[0] in activation_absmax:
                absmax = activation_absmax[node.input[0]]
                island.candidates["int8s"] = _matmul_smoothed(node, weight, absmax, alpha, per_channel)
            if island.kind == "matmul":  # onnxruntime folds a weight DequantizeLinear into MatMul, not into Attention
                island.candidates["w8"] = _matmul_w8(node, weight, per_channel)
                if activation_samples is not None and node.input[0] in activation_samples:
                    island.candidates["xint8"] = _matmul_xint8(node, weight, activation_samples[node.input[0]])
            island.candidates["fp32"] = fp32
        else:
            int8 = _gather_int8(node, weight)  # INT8 rows, FP32 out: already weight-only, so w8 is the same
            island.candidates = {"int8": int8, "int8s": int8, "w8": int8, "fp32": fp32}


def quantize_symmetric(weight: np.ndarray, axis: int, per_channel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """INT8 symmetric, one scale per index of `axis` (or one for the whole tensor when not per_channel):
    returns (int8 values, float scales shaped [size of axis])."""
    reduce_axes = tuple(i for i in range(weight.ndim) if i != axis)
    scale = np.abs(weight).max(axis=reduce_axes) / 127.0
    if not per_channel:
        scale = np.full_like(scale, scale.max())
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def _int8_weight(node: onnx.NodeProto, weight: np.ndarray, per_channel: bool, tag: str = "W"):
    """(initializer names, initializers, bytes) of a MatMul weight in INT8, one scale per output column."""
    q, scale = quantize_symmetric(weight, axis=1, per_channel=per_channel)
    base = node.name.strip("/").replace("/", "_")
    names = [f"{base}_{tag}_int8", f"{base}_{tag}_scale", f"{base}_{tag}_zp"]
    inits = [numpy_helper.from_array(q, names[0]), numpy_helper.from_array(scale, names[1]),
             numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), names[2])]  # fmt: skip
    return names, inits, q.nbytes + scale.nbytes * 2


def _int8_compute(node: onnx.NodeProto, activation: str, weight_names: list[str]) -> list[onnx.NodeProto]:
    """The node(s) computing `node` in INT8 from a float activation and an INT8 weight with per-column scales:
    DynamicQuantizeMatMul for a MatMul; DynamicQuantizeLinear + QAttention for a fused Attention."""
    if node.op_type == "MatMul":
        return [helper.make_node("DynamicQuantizeMatMul", [activation, *weight_names], list(node.output),
                                 name=node.name, domain=MS_DOMAIN)]  # fmt: skip
    base = node.name.strip("/").replace("/", "_")
    q, scale, zero = f"{base}_input_q", f"{base}_input_scale", f"{base}_input_zp"
    mask = node.input[3] if len(node.input) > 3 else ""
    w_q, w_scale, w_zero = weight_names
    attention = helper.make_node("QAttention", [q, w_q, node.input[2], scale, w_scale, mask, zero, w_zero],
                                 node.output[:1], name=node.name, domain=MS_DOMAIN)  # fmt: skip
    attention.attribute.extend(a for a in node.attribute if a.name in ("num_heads", "unidirectional"))
    quantize = helper.make_node("DynamicQuantizeLinear", [activation], [q, scale, zero], name=f"{node.name}_quantize_input")
    return [quantize, attention]


def _plain_attention(node: onnx.NodeProto, inits: dict) -> bool:
    """A fused Attention whose QKV weight is a constant 2-D float matrix, with no past state or extra inputs."""
    weight = inits.get(node.input[1]) if len(node.input) > 1 else None
    return (node.domain == MS_DOMAIN and weight is not None and len(weight.dims) == 2
            and weight.data_type == onnx.TensorProto.FLOAT and node.input[2] in inits
            and all(not name for name in node.input[4:]) and len([o for o in node.output if o]) == 1)  # fmt: skip


def _matmul_int8(node: onnx.NodeProto, weight: np.ndarray, per_channel: bool) -> Candidate:
    names, inits, size = _int8_weight(node, weight, per_channel)
    return Candidate(_int8_compute(node, node.input[0], names), inits, size)


def _matmul_smoothed(node: onnx.NodeProto, weight: np.ndarray, absmax: np.ndarray, alpha: float,
                     per_channel: bool) -> Candidate:  # fmt: skip
    w_absmax = np.abs(weight).max(axis=1)
    smooth = (np.maximum(absmax, 1e-5) ** alpha / np.maximum(w_absmax, 1e-5) ** (1 - alpha)).astype(np.float32)
    names, inits, size = _int8_weight(node, weight * smooth[:, None], per_channel, tag="Ws")
    base = node.name.strip("/").replace("/", "_")
    inverse, smoothed = f"{base}_inverse_smooth", f"{base}_smoothed_input"
    inits.append(numpy_helper.from_array((1.0 / smooth).astype(np.float32), inverse))
    mul = helper.make_node("Mul", [node.input[0], inverse], [smoothed], name=f"{node.name}_smooth")
    return Candidate([mul, *_int8_compute(node, smoothed, names)], inits, size + smooth.nbytes)


def _matmul_xint8(node: onnx.NodeProto, weight: np.ndarray, samples: np.ndarray) -> Candidate:
    from edgeq.quantize.pow2 import QMAX, QMIN, best_exponent

    base = node.name.strip("/").replace("/", "_")
    w_exp, x_exp = best_exponent(weight), best_exponent(samples)
    w_q = np.clip(np.round(weight / 2.0**w_exp), QMIN, QMAX).astype(np.int8)
    names = {k: f"{base}_{k}" for k in ("W_xint8", "W_scale", "X_scale", "zero", "X_q", "X_dq", "W_dq")}
    inits = [numpy_helper.from_array(w_q, names["W_xint8"]),
             numpy_helper.from_array(np.float32(2.0**w_exp), names["W_scale"]),
             numpy_helper.from_array(np.float32(2.0**x_exp), names["X_scale"]),
             numpy_helper.from_array(np.int8(0), names["zero"])]  # fmt: skip
    nodes = [
        helper.make_node("QuantizeLinear", [node.input[0], names["X_scale"], names["zero"]], [names["X_q"]],
                         name=f"{node.name}_quantize_input"),
        helper.make_node("DequantizeLinear", [names["X_q"], names["X_scale"], names["zero"]], [names["X_dq"]],
                         name=f"{node.name}_dequantize_input"),
        helper.make_node("DequantizeLinear", [names["W_xint8"], names["W_scale"], names["zero"]], [names["W_dq"]],
                         name=f"{node.name}_dequantize_weight"),
        helper.make_node("MatMul", [names["X_dq"], names["W_dq"]], list(node.output), name=node.name),
    ]  # fmt: skip
    return Candidate(nodes, inits, w_q.nbytes + 9)


def matmul_inputs(model: onnx.ModelProto, islands: list[Island]) -> list[str]:
    """The activation tensors the MatMul and Attention islands read (what SmoothQuant needs statistics of)."""
    nodes = {n.name: n for n in model.graph.node}
    return sorted({nodes[i.node_name].input[0] for i in islands if i.kind != "gather"})


def _matmul_w8(node: onnx.NodeProto, weight: np.ndarray, per_channel: bool) -> Candidate:
    names, inits, size = _int8_weight(node, weight, per_channel)
    dequantized = f"{node.name.strip('/').replace('/', '_')}_W_dequantized"
    dq = helper.make_node("DequantizeLinear", names, [dequantized], name=f"{node.name}_dequantize_weight", axis=1)
    compute = onnx.NodeProto()
    compute.CopyFrom(node)  # the same MatMul or Attention, reading the dequantized weight
    compute.input[1] = dequantized
    return Candidate([dq, compute], inits, size)


def _gather_int8(node: onnx.NodeProto, table: np.ndarray) -> Candidate:
    q, scale = quantize_symmetric(table, axis=0)
    base = node.name.strip("/").replace("/", "_")
    q_name, s_name = f"{base}_table_int8", f"{base}_row_scale"
    inits = [numpy_helper.from_array(q, q_name), numpy_helper.from_array(scale.reshape(-1, 1), s_name)]
    rows, row_scales, as_float = f"{base}_rows_int8", f"{base}_rows_scale", f"{base}_rows_float"
    axis = helper.make_attribute("axis", 0)
    nodes = [
        helper.make_node("Gather", [q_name, node.input[1]], [rows], name=node.name),
        helper.make_node("Gather", [s_name, node.input[1]], [row_scales], name=f"{node.name}_scale"),
        helper.make_node("Cast", [rows], [as_float], name=f"{node.name}_cast", to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", [as_float, row_scales], list(node.output), name=f"{node.name}_dequantize"),
    ]
    nodes[0].attribute.append(axis)
    nodes[1].attribute.append(axis)
    return Candidate(nodes, inits, q.nbytes + scale.nbytes)


def _numel(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims)) if tensor.dims else 1
