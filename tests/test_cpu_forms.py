"""edgeq.optimize.cpu_forms: SkipLayerNormalization and BiasGelu rewritten into the forms onnxruntime's CPU EP runs
fastest compute the same outputs, and onnxruntime does not fuse them back at load."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.optimize.cpu_forms import split_fused_norms

MS = "com.microsoft"
HIDDEN, FFN, TOKENS = 8, 16, 5


def _encoder_block() -> onnx.ModelProto:
    """x → integer GEMM (DynamicQuantizeMatMul) → BiasGelu → MatMulIntegerToFloat (static input scale) →
    SkipLayerNorm(+x, bias) → float MatMul → SkipLayerNorm(+previous, bias): every case the rewrite meets."""
    rng = np.random.default_rng(0)

    def tensor(name, array):
        return numpy_helper.from_array(np.asarray(array), name)

    inits = [
        tensor("w1", rng.integers(-127, 128, (HIDDEN, FFN), dtype=np.int8)),
        tensor("w1_scale", np.full(FFN, 0.01, np.float32)),
        tensor("w1_zp", np.zeros(FFN, np.int8)),
        tensor("b1", rng.standard_normal(FFN).astype(np.float32)),
        tensor("x_scale", np.float32(0.05)),
        tensor("x_zp", np.uint8(128)),
        tensor("w2", rng.integers(-127, 128, (FFN, HIDDEN), dtype=np.int8)),
        tensor("w2_scale", np.full(HIDDEN, 0.01, np.float32)),
        tensor("w2_zp", np.zeros(HIDDEN, np.int8)),
        tensor("b2", rng.standard_normal(HIDDEN).astype(np.float32)),
        tensor("w3", rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32) * 0.3),
        tensor("b3", rng.standard_normal(HIDDEN).astype(np.float32)),
        tensor("gamma", (rng.random(HIDDEN) + 0.5).astype(np.float32)),
        tensor("beta", rng.standard_normal(HIDDEN).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("DynamicQuantizeMatMul", ["x", "w1", "w1_scale", "w1_zp"], ["h1"], domain=MS),
        helper.make_node("BiasGelu", ["h1", "b1"], ["g"], domain=MS),
        helper.make_node("QuantizeLinear", ["g", "x_scale", "x_zp"], ["g_q"]),
        helper.make_node(
            "MatMulIntegerToFloat", ["g_q", "w2", "x_scale", "w2_scale", "x_zp", "w2_zp"], ["h2"], domain=MS
        ),
        helper.make_node("SkipLayerNormalization", ["h2", "x", "gamma", "beta", "b2"], ["n1"], domain=MS, epsilon=1e-5),
        helper.make_node("MatMul", ["n1", "w3"], ["h3"]),
        helper.make_node("SkipLayerNormalization", ["h3", "n1", "gamma", "beta", "b3"], ["y"], domain=MS, epsilon=1e-5),
    ]
    dims = ["batch", "sequence", HIDDEN]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, x: np.ndarray, optimized_to=None) -> np.ndarray:
    options = ort.SessionOptions()
    if optimized_to:
        options.optimized_model_filepath = str(optimized_to)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.fast
def test_the_rewritten_block_computes_the_same_and_stays_unfused_at_load(tmp_path):
    original = _encoder_block()
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(original)
    counts = split_fused_norms(rewritten)
    onnx.checker.check_model(rewritten)
    # both SkipLayerNorms split; the BiasGelu's bias and the first SkipLayerNorm's into their integer GEMMs; the
    # float MatMul's bias stays a separate Add
    assert counts == {"skip_layer_norms_split": 2, "bias_gelus_split": 1, "biases_into_gemm": 2}
    ops = [n.op_type for n in rewritten.graph.node]
    assert "SkipLayerNormalization" not in ops and "BiasGelu" not in ops
    assert ops.count("Sum") == 2 and ops.count("LayerNormalization") == 2 and ops.count("Add") == 1
    gemms = {n.op_type: n for n in rewritten.graph.node if n.op_type.endswith(("MatMul", "ToFloat"))}
    assert gemms["DynamicQuantizeMatMul"].input[4] == "b1"
    assert gemms["MatMulIntegerToFloat"].input[6] == "b2"

    x = np.random.default_rng(1).standard_normal((3, TOKENS, HIDDEN)).astype(np.float32)
    loaded = tmp_path / "loaded.onnx"
    np.testing.assert_allclose(_run(rewritten, x, loaded), _run(original, x), rtol=1e-4, atol=1e-4)
    # onnxruntime's load-time fusions (shapes known here) do not make SkipLayerNormalization or BiasGelu again
    after_load = [n.op_type for n in onnx.load(str(loaded)).graph.node]
    assert "SkipLayerNormalization" not in after_load and "BiasGelu" not in after_load, after_load


@pytest.mark.fast
def test_a_used_optional_output_or_an_old_opset_is_left_alone():
    model = _encoder_block()
    skip = next(n for n in model.graph.node if n.op_type == "SkipLayerNormalization")
    skip.output.extend(["", "", "pre_norm_sum"])  # the sum before the norm, read by a graph output
    model.graph.output.append(helper.make_tensor_value_info("pre_norm_sum", TensorProto.FLOAT, None))
    counts = split_fused_norms(model)
    assert counts["skip_layer_norms_split"] == 1  # only the other one
    assert [n.op_type for n in model.graph.node].count("SkipLayerNormalization") == 1

    old = _encoder_block()
    old.opset_import[0].version = 16  # no ONNX LayerNormalization before opset 17
    assert split_fused_norms(old) == {}
