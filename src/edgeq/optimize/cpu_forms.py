"""The forms onnxruntime's CPU EP runs fastest, written into a quantized encoder after its islands are assembled.

onnxruntime's transformer optimizer fuses the residual Add and LayerNorm into SkipLayerNormalization (with the
dense layer's bias) and the FFN's bias Add and Gelu into BiasGelu. In onnxruntime 1.32 the CPU kernels of both are
slower than the standard ops they replace: SkipLayerNormalization's float path is a scalar loop with a division per
element, where LayerNormalization is vectorized. Measured on a 32×128 MiniLM batch (2 threads, AMD EPYC AVX-512
VNNI; `bench/cpu_kernels.py` repeats it on any host): SkipLayerNormalization 4.0 ms against Sum + LayerNormalization
1.5 ms; BiasGelu 3.6 ms against Gelu 2.5 ms once the bias is added inside the integer GEMM before it.

So each SkipLayerNormalization becomes Sum + LayerNormalization, and each bias of a SkipLayerNormalization or a
BiasGelu moves into the integer GEMM that produces its input (MatMulIntegerToFloat and DynamicQuantizeMatMul take a
bias, added in the GEMM's output pass) or, where there is none, stays a separate Add. onnxruntime's load-time fusions
then take such an Add into the DynamicQuantizeMatMul they make of onnxruntime's quantizer's MatMulInteger chain, and
fuse an Add after a float MatMul with its Gelu back into BiasGelu (as before). The residual is a Sum, not an Add:
onnxruntime's load-time fusion turns Add + LayerNormalization back into SkipLayerNormalization whenever it knows
both inputs' shapes, and it matches Add only. The rewrite changes only the order of float additions."""

from __future__ import annotations

import onnx
from onnx import helper

from edgeq.graph import MS_DOMAIN, producers, readers

BIAS_INPUT = {"MatMulIntegerToFloat": 6, "DynamicQuantizeMatMul": 4}  # the integer GEMMs' optional bias
LAYER_NORM_OPSET = 17  # ONNX LayerNormalization


def split_fused_norms(model: onnx.ModelProto) -> dict[str, int]:
    """Rewrite `model` in place (see the module's text); return how many of each change were made."""
    if _onnx_opset(model) < LAYER_NORM_OPSET:
        return {}
    graph = model.graph
    made_by = producers(model)
    read = {name: len(nodes) for name, nodes in readers(model).items()}
    for output in graph.output:  # a graph output is read too
        read[output.name] = read.get(output.name, 0) + 1
    counts = {"skip_layer_norms_split": 0, "bias_gelus_split": 0, "biases_into_gemm": 0}
    nodes = []
    for node in graph.node:
        if node.domain == MS_DOMAIN and node.op_type == "SkipLayerNormalization" and _only_first_output(node, read):
            nodes += _split_skip_layer_norm(node, made_by, read, counts)
        elif node.domain == MS_DOMAIN and node.op_type == "BiasGelu":
            nodes += _split_bias_gelu(node, made_by, read, counts)
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return {k: v for k, v in counts.items() if v}


def _split_skip_layer_norm(node, made_by, read, counts) -> list[onnx.NodeProto]:
    x, skip, gamma = node.input[:3]
    beta = node.input[3] if len(node.input) > 3 else ""
    bias = node.input[4] if len(node.input) > 4 else ""
    epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
    base = node.name or node.output[0]
    nodes, x = _bias_added(x, bias, base, made_by, read, counts)
    total = f"{base}_residual_sum"
    nodes += [
        helper.make_node("Sum", [x, skip], [total], name=f"{base}_residual"),
        helper.make_node(
            "LayerNormalization",
            [total, gamma, *([beta] if beta else [])],
            node.output[:1],
            name=node.name,
            axis=-1,
            epsilon=epsilon,
        ),
    ]
    counts["skip_layer_norms_split"] += 1
    return nodes


def _split_bias_gelu(node, made_by, read, counts) -> list[onnx.NodeProto]:
    nodes, x = _bias_added(node.input[0], node.input[1], node.name or node.output[0], made_by, read, counts)
    counts["bias_gelus_split"] += 1
    return [*nodes, helper.make_node("Gelu", [x], list(node.output), name=node.name, domain=MS_DOMAIN)]


def _into_gemm(x: str, bias: str, made_by, read, counts) -> bool:
    """Move `bias` into the integer GEMM that makes x, when it has a free bias input and x feeds nothing else."""
    gemm = made_by.get(x)
    slot = BIAS_INPUT.get(gemm.op_type) if gemm is not None and gemm.domain == MS_DOMAIN else None
    if slot is None or read.get(x) != 1 or (len(gemm.input) > slot and gemm.input[slot]):
        return False
    gemm.input.extend([""] * (slot - len(gemm.input)))
    gemm.input.append(bias)
    counts["biases_into_gemm"] += 1
    return True


def _bias_added(x: str, bias: str, name: str, made_by, read, counts) -> tuple[list[onnx.NodeProto], str]:
    """`x + bias`: inside the integer GEMM that makes x (no node), else a separate Add. Returns the nodes to add
    and the name of the sum."""
    if not bias or _into_gemm(x, bias, made_by, read, counts):
        return [], x
    biased = f"{name}_biased"
    return [helper.make_node("Add", [x, bias], [biased], name=f"{name}_bias")], biased


def _only_first_output(node: onnx.NodeProto, read: dict[str, int]) -> bool:
    """Nothing reads the node's optional outputs (mean, inverse deviation, the pre-norm sum)."""
    return not any(read.get(name) for name in node.output[1:] if name)


def _onnx_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
