"""Legalization for a mobile EP's coverage: fold what fixed shapes make constant, then rewrite ops the EP lacks
into decompositions it has, so that the model falls into fewer partitions.

Rewrites (each exact in FP32 arithmetic for finite inputs, up to the order of the operations' rounding):
  LayerNormalization → ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Div, Mul, Add
  Where(c, a, b)     → a·c + b·(1 − c)      (c cast to float; the attention mask's fill is finite)
  Expand(x, shape)   → x · ones(shape)      (shape constant)
Erf (GELU) has no exact decomposition into ops NNAPI has, and stays where it is: the report says so."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

REWRITES = ("LayerNormalization", "Where", "Expand")


def fold_fixed_shapes(source: Path, target: Path) -> None:
    """onnxruntime's basic graph optimizations (constant folding, shape arithmetic at fixed sizes, standard-op
    fusions only), written out as a model. MatMul+Add→Gemm is left to the quantizer's own pre-processing:
    onnxruntime 1.32 cannot load a model that fusion has already run on twice ("Attempt to replace the existing
    tensor")."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(
        str(source), options, providers=["CPUExecutionProvider"], disabled_optimizers=["MatMulAddFusion"]
    )


def legalize(source: Path, target: Path, coverage_kinds: list[str]) -> dict:
    """Fold, then decompose the ops that any of `coverage_kinds` lacks. Returns the coverage of the folded model
    (before) and of the rewritten one (after), per kind."""
    from edgeq.targets.coverage import coverage_estimate

    with tempfile.TemporaryDirectory(prefix="edgeq-legalize-") as tmp:
        folded = Path(tmp) / "folded.onnx"
        fold_fixed_shapes(source, folded)
        before = {kind: coverage_estimate(folded, kind) for kind in coverage_kinds}
        model = onnx.load(str(folded))
        lacking = {op.split(":")[-1] for kind in coverage_kinds for op in before[kind]["unsupported_ops"]}
        rewritten = decompose(model, [op for op in REWRITES if op in lacking])
        onnx.save(model, str(target))
    after = {kind: coverage_estimate(target, kind) for kind in coverage_kinds}
    return {
        "rewritten": rewritten,
        "coverage_before": _brief(before),
        "coverage_after": _brief(after),
        "not_rewritten": sorted({op for kind in after for op in after[kind]["unsupported_ops"]}),
    }


def _brief(coverage: dict) -> dict:
    return {
        kind: {k: c[k] for k in ("nodes", "supported_nodes", "share", "partitions", "unsupported_ops")}
        for kind, c in coverage.items()
    }


def decompose(model: onnx.ModelProto, ops: list[str]) -> dict[str, int]:
    """Replace every node of `ops` in place by its decomposition; return how many of each were replaced."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    constants = {t.name: t for t in model.graph.initializer}
    floats = _float_tensors(model)
    done: Counter = Counter()
    nodes = []
    for node in model.graph.node:
        make = _REWRITERS.get(node.op_type) if node.op_type in ops and node.output[0] in floats else None
        replacement = make(node, constants, opset) if make else None
        if replacement is None:
            nodes.append(node)
            continue
        new_nodes, new_inits = replacement
        nodes += new_nodes
        model.graph.initializer.extend(new_inits)
        done[node.op_type] += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return dict(done)


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the FP32 tensors (the rewrites are float arithmetic: integer Expands and Wheres stay)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    return {i.name for i in infos if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


def _layer_norm(node, constants, opset):
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    if axis != -1 or len(node.input) < 2:
        return None
    base = node.name or node.output[0]
    x, scale = node.input[0], node.input[1]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    names = {
        k: f"{base}_ln_{k}"
        for k in ("mean", "centred", "square", "variance", "eps", "shifted", "std", "normed", "scaled", "axes")
    }
    inits = [numpy_helper.from_array(np.array(epsilon, np.float32), names["eps"])]

    def reduce_mean(source, out):
        if opset >= 18:
            return helper.make_node("ReduceMean", [source, names["axes"]], [out], keepdims=1)
        return helper.make_node("ReduceMean", [source], [out], axes=[-1], keepdims=1)

    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), names["axes"]))
    last = names["scaled"] if bias else node.output[0]
    nodes = [
        reduce_mean(x, names["mean"]),
        helper.make_node("Sub", [x, names["mean"]], [names["centred"]]),
        helper.make_node("Mul", [names["centred"], names["centred"]], [names["square"]]),
        reduce_mean(names["square"], names["variance"]),
        helper.make_node("Add", [names["variance"], names["eps"]], [names["shifted"]]),
        helper.make_node("Sqrt", [names["shifted"]], [names["std"]]),
        helper.make_node("Div", [names["centred"], names["std"]], [names["normed"]]),
        helper.make_node("Mul", [names["normed"], scale], [last]),
    ]
    if bias:
        nodes.append(helper.make_node("Add", [last, bias], [node.output[0]]))
    for index, made in enumerate(nodes):
        made.name = f"{base}/ln_{index}"
    return nodes, inits


def _where(node, constants, opset):
    for operand in node.input[1:]:  # a non-finite constant would turn 0·x into NaN
        if operand in constants and not np.isfinite(numpy_helper.to_array(constants[operand])).all():
            return None
    base = node.name or node.output[0]
    c, a, b = node.input
    names = {k: f"{base}_where_{k}" for k in ("mask", "one", "inverse", "kept", "other")}
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), names["one"])]
    nodes = [
        helper.make_node("Cast", [c], [names["mask"]], to=onnx.TensorProto.FLOAT),
        helper.make_node("Sub", [names["one"], names["mask"]], [names["inverse"]]),
        helper.make_node("Mul", [a, names["mask"]], [names["kept"]]),
        helper.make_node("Mul", [b, names["inverse"]], [names["other"]]),
        helper.make_node("Add", [names["kept"], names["other"]], [node.output[0]]),
    ]
    for index, made in enumerate(nodes):
        made.name = f"{base}/where_{index}"
    return nodes, inits


def _expand(node, constants, opset):
    if node.input[1] not in constants:
        return None
    shape = numpy_helper.to_array(constants[node.input[1]]).astype(np.int64)
    base = node.name or node.output[0]
    ones = numpy_helper.from_array(np.ones(shape, np.float32), f"{base}_expand_ones")
    made = helper.make_node("Mul", [node.input[0], ones.name], [node.output[0]], name=f"{base}/expand")
    return [made], [ones]


_REWRITERS = {"LayerNormalization": _layer_norm, "Where": _where, "Expand": _expand}
