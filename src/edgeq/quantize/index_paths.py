"""Float arithmetic that computes indices (relative-position buckets, as in MPNet, DeBERTa or T5) must never be
quantized: a quantized position becomes a wrong bucket, and a wrong bucket an out-of-range Gather. onnxruntime's
static quantizer does not know which float ops feed an index; this finds them."""

from __future__ import annotations

import onnx

from edgeq.graph import producers

INTEGER_TYPES = {
    onnx.TensorProto.INT64,
    onnx.TensorProto.INT32,
    onnx.TensorProto.INT16,
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.UINT32,
    onnx.TensorProto.UINT64,
}
COMPUTE_OPS = {
    "MatMul",
    "Gemm",
    "Conv",
    "Attention",
    "MultiHeadAttention",
    "LayerNormalization",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
    "Softmax",
}  # where an index path cannot start


def index_path_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes whose float results flow into a Cast to an integer type, walking back from each such
    Cast through everything but model compute (MatMul, attention, normalisation)."""
    producer = producers(model)
    found: set[str] = set()
    stack = [n for n in model.graph.node if n.op_type == "Cast" and _cast_to(n) in INTEGER_TYPES]
    while stack:
        node = stack.pop()
        for name in node.input:
            source = producer.get(name)
            if source is None or source.name in found or source.op_type in COMPUTE_OPS:
                continue
            found.add(source.name)
            stack.append(source)
    return sorted(n for n in found if n)


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)
