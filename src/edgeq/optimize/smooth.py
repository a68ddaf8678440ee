"""SmoothQuant on a float model: divide each MatMul input channel by s (one Mul) and multiply the weight's row
by s, with s = max|x|^a / max|w|^(1-a). The function is unchanged; activation outliers move into the weights,
which static per-tensor quantization (a DPU's XINT8, say) then handles far better."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def matmul_weight_inputs(model: onnx.ModelProto) -> dict[str, str]:
    """MatMul node name -> its activation input, for MatMuls whose B is a constant 2-D float weight."""
    inits = {t.name: t for t in model.graph.initializer}
    return {n.name: n.input[0] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits
            and len(inits[n.input[1]].dims) == 2 and inits[n.input[1]].data_type == onnx.TensorProto.FLOAT}  # fmt: skip


def smooth_matmuls(model: onnx.ModelProto, absmax: dict[str, np.ndarray], alpha: float) -> int:
    """In place: smooth every constant-weight MatMul whose input has statistics in `absmax`; return how many."""
    inits = {t.name: t for t in model.graph.initializer}
    targets = matmul_weight_inputs(model)
    nodes, smoothed = [], 0
    for node in model.graph.node:
        if node.name not in targets or node.input[0] not in absmax:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        scale = (np.maximum(absmax[node.input[0]], 1e-5) ** alpha
                 / np.maximum(np.abs(weight).max(axis=1), 1e-5) ** (1 - alpha)).astype(np.float32)  # fmt: skip
        base = node.name.strip("/").replace("/", "_")
        inverse, smoothed_input, new_weight = f"{base}_inverse_smooth", f"{base}_smoothed_input", f"{base}_smoothed_W"
        model.graph.initializer.extend([numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse),
                                        numpy_helper.from_array((weight * scale[:, None]).astype(np.float32), new_weight)])  # fmt: skip
        nodes.append(helper.make_node("Mul", [node.input[0], inverse], [smoothed_input], name=f"{node.name}_smooth"))
        matmul = onnx.NodeProto()
        matmul.CopyFrom(node)
        matmul.input[0], matmul.input[1] = smoothed_input, new_weight
        nodes.append(matmul)
        smoothed += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return smoothed
