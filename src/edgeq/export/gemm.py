"""Gemm with a constant weight, rewritten as MatMul + Add (exact): the form every quantizer and edgeq's islands
know. GPT-2's Conv1D layers export as Gemm; so do fixed-shape encoders after onnxruntime's pre-processing."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite, in place, every Gemm(A, B, C) whose B is an initializer and alpha = beta = 1, transA = 0;
    return how many were rewritten."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes, rewritten = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or node.input[1] not in inits or not plain:
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            transposed = numpy_helper.to_array(inits[weight]).T.copy()
            weight = f"{weight}_transposed"
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(transposed), weight))
        product = node.output[0] if len(node.input) < 3 or not node.input[2] else f"{node.output[0]}_product"
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product], name=node.name))
        if product != node.output[0]:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return rewritten


def fold_weight_transposes(model: onnx.ModelProto) -> int:
    """Replace, in place, every Transpose of a 2-D constant that only MatMuls read as their weight by the transposed
    constant; return how many. A language model with tied embeddings exports its LM head as
    MatMul(x, Transpose(embedding)): no quantizer sees a constant weight there, so the head (a quarter of
    SmolLM2's weights, most of its decode time) stayed FP32. The cost: the FP32 reference holds the table twice;
    quantized models hold each in their own precision."""
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for position, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, position))
    outputs = {o.name for o in model.graph.output}
    kept, folded = [], 0
    for node in model.graph.node:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
        source = inits.get(node.input[0]) if node.op_type == "Transpose" else None
        users = readers.get(node.output[0], []) if source is not None else []
        if (
            source is None
            or len(source.dims) != 2
            or perm != [1, 0]
            or node.output[0] in outputs
            or not users
            or not all(user.op_type == "MatMul" and position == 1 for user, position in users)
        ):
            kept.append(node)
            continue
        transposed = np.ascontiguousarray(numpy_helper.to_array(source).T)
        model.graph.initializer.append(numpy_helper.from_array(transposed, node.output[0]))
        folded += 1
    if folded:
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return folded
