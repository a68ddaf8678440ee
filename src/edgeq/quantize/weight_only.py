"""INT8 storage for the weights of MatMuls that static quantization left in FP32 (`nodes_to_exclude`).

The MatMul still computes in floating point; its constant weight W [K, N] is stored as uint8 with a DequantizeLinear
before it. NNAPI's DequantizeLinear takes only one scale and zero point per tensor (onnxruntime's NNAPI EP: uint8
input, scalar scale and zero point), and one scale for a whole matrix loses the small columns to the large ones
(MiniLM's FFN weights per tensor: cosine 0.986). So the matrix is quantized per column (symmetric INT8, the
project's `quantize_symmetric`), the integers are stored as uint8 with zero point 128 and scale 1 (one scale for
the tensor), and a Mul by the column scales follows the MatMul: X @ (Q * s) = (X @ Q) * s. That is per-channel INT8
from ops NNAPI runs, in the partition of the MatMul they serve; on any other EP it is one constant
DequantizeLinear and one Mul."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeq.graph import readers
from edgeq.quantize.numerics import quantize_symmetric

ZERO_POINT = 128


def column_uint8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 values with zero point 128, per-column scales [N]) with weight ≈ (values - 128) * scales."""
    q, scales = quantize_symmetric(weight, axis=1)
    return (q.astype(np.int16) + ZERO_POINT).astype(np.uint8), scales


def store_weights_int8(model: onnx.ModelProto, node_names: list[str]) -> list[str]:
    """Rewrite, in place, the named MatMuls whose second input is a constant FP32 matrix read by no other node.
    Returns the names of the MatMuls rewritten."""
    inits = {t.name: t for t in model.graph.initializer}
    reading = readers(model)
    wanted, rewritten, nodes = set(node_names), [], []
    for node in model.graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if (
            node.name in wanted
            and weight is not None
            and weight.data_type == onnx.TensorProto.FLOAT
            and len(weight.dims) == 2
            and len(reading[weight.name]) == 1
        ):
            dequantize, rescale = _weight_only(model, node, weight)
            nodes += [dequantize, node, rescale]
            rewritten.append(node.name)
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return rewritten


def _weight_only(model: onnx.ModelProto, node: onnx.NodeProto, weight: onnx.TensorProto):
    q, scales = column_uint8(numpy_helper.to_array(weight))
    base = weight.name
    names = (f"{base}_uint8", f"{base}_uint8_scale", f"{base}_uint8_zero_point")
    column_scales = f"{base}_column_scale"
    model.graph.initializer.remove(weight)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(q, names[0]),
            numpy_helper.from_array(np.array(1.0, np.float32), names[1]),
            numpy_helper.from_array(np.array(ZERO_POINT, np.uint8), names[2]),
            numpy_helper.from_array(scales, column_scales),
        ]
    )
    dequantized, output, unscaled = f"{base}_dequantized", node.output[0], f"{node.output[0]}_unscaled"
    node.input[1], node.output[0] = dequantized, unscaled
    dequantize = helper.make_node("DequantizeLinear", list(names), [dequantized], name=f"{node.name}_dequantize_weight")
    rescale = helper.make_node("Mul", [unscaled, column_scales], [output], name=f"{node.name}_column_scale")
    return dequantize, rescale
