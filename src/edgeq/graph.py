"""Maps over an ONNX graph that several rewrites need: which node produces a tensor, which nodes read it."""

from __future__ import annotations

from collections import defaultdict

import onnx

MS_DOMAIN = "com.microsoft"  # onnxruntime's contrib operators


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """tensor name → the node that writes it (graph inputs and initializers have none)."""
    return {out: node for node in model.graph.node for out in node.output}


def readers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """tensor name → the nodes that read it, once per input slot (a node reading it twice is listed twice)."""
    found: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            if name:
                found[name].append(node)
    return found
