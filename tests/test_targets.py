"""Mobile and FPGA targets on tiny models: the real QNN HTP backend (emulated) with CPU fallback disabled, NNAPI
and CoreML coverage estimates with an ORT-format model, and the DPU's power-of-two rules."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from conftest import base_recipe
from onnx import numpy_helper

from edgeq import api
from edgeq.optimize.mask import soften_mask_fill
from edgeq.quantize.pow2 import best_exponent, dpu_compliance

CALIBRATION = {"data": {"path": "data/calibration.txt"}, "samples": 16}


def static_recipe(model_dir, targets, **quantization) -> dict:
    return base_recipe(
        str(model_dir),
        export={"batch_size": 1, "sequence_length": 32},
        targets=targets,
        quantization={"mode": "static", "format": "qdq", "calibration": CALIBRATION, **quantization},
        validation={"samples": 12, "warmup": 1, "thresholds": {"cosine_mean": 0.98}},
    )


def test_qnn_htp_runs_every_node_with_cpu_fallback_disabled(tiny_bert, write_recipe, tmp_path):
    pytest.importorskip("onnxruntime_qnn")
    recipe = static_recipe(
        tiny_bert,
        ["snapdragon-8-gen-3"],
        activation_type="uint16",
        weight_type="uint8",
        symmetric_weights=False,
        op_types=None,
    )  # every op quantized: the HTP runs no float
    report = api.build(write_recipe(recipe), output=tmp_path / "out").report
    (entry,) = report["validations"]  # the HTP cannot run FP32: only the quantized model is validated there
    assert entry["artifact"] == "w8a16" and entry["provider"] == "QNNExecutionProvider"
    assert entry["mode"] == "emulated" and "emulator" in entry["note"]
    assert list(entry["placement"]) == ["QNNExecutionProvider"] and entry["fallback_nodes"] == 0
    assert entry["partitions"] >= 1
    assert entry["latency_ratio_to_reference"] is None and "not on the device" in entry["latency_note"]
    assert entry["metrics"]["cosine_mean"] >= 0.99 and entry["passed"]
    quantize = next(s for s in report["stages"] if s["name"] == "quantize")
    assert quantize["scheme"] == "qnn" and quantize["mask_fill_softened"] >= 1


def test_diverge_compares_every_quantized_tensor_of_the_htp_with_its_simulation(
    tiny_bert, write_recipe, run_cli, tmp_path
):
    """`edgeq diverge` on the emulated HTP: one entry per quantized activation in graph order, the JSON contract, and
    the departure test. The same model on this host's CPU EP is its own simulation: nothing departs there."""
    import json

    from edgeq.diverge import probes
    from edgeq.report_contract import Divergence

    pytest.importorskip("onnxruntime_qnn")
    recipe = static_recipe(
        tiny_bert, ["snapdragon-8-gen-3"], activation_type="uint16", weight_type="uint8", op_types=None
    )
    recipe["validation"]["diverge"] = "always"  # the build runs it whatever the fidelity: its mechanics are tested
    out = tmp_path / "out"
    built = api.build(write_recipe(recipe), output=out)
    (entry,) = built.report["validations"]
    assert entry["simulation"]["provider"] == "CPUExecutionProvider" and "departs" in entry["simulation"]
    written = json.loads((out / entry["divergence"]["file"]).read_text())
    assert len(entry["divergence"]["curve"]) == len(written["tensors"])
    assert entry["divergence"]["first_departure"] == written["first_departure"]
    assert "Where the device departs" in (out / "report.html").read_text()
    model, fp32 = out / "final" / "model.onnx", out / "fp32" / "model.onnx"
    data = tmp_path / "data" / "validation.txt"
    args = ["diverge", model, "--reference", fp32, "--data", data, "--samples", "2"]
    htp = run_cli(*args, "--device", "snapdragon-8-gen-3", "--json", tmp_path / "htp.json")
    assert htp.exit_code == 0, htp.output
    report = json.loads((tmp_path / "htp.json").read_text())
    Divergence.model_validate(report)
    expected = [p.tensor for p in probes(onnx.load(str(model)))]
    assert [t["name"] for t in report["tensors"]] == expected and len(expected) > 20
    assert report["mode"] == "emulated" and report["provider"] == "QNNExecutionProvider"
    assert all(t["sqnr_vs_fp32_db"] is not None for t in report["tensors"] if t["op"] in ("Softmax", "Gelu"))
    shaped = [t for t in report["tensors"] if t["op"] in ("Reshape", "Transpose")]
    assert shaped and all(t["local_sqnr_db"] is None for t in shaped)  # data movement: exact on the HTP too
    measured = [t for t in report["tensors"] if t["local_sqnr_db"] is not None]
    below = [t for t in measured if t["local_sqnr_db"] < report["threshold_db"]]
    assert report["first_departure"] == (below[0] if below else None) and report["departures"] == len(below)
    assert "against the CPU EP's simulation" in htp.output

    everything = run_cli(*args, "--device", "snapdragon-8-gen-3", "--threshold-db", "1000", "--json", "-")
    assert json.loads(everything.output)["first_departure"]["name"] == measured[0]["name"]

    host = json.loads(run_cli(*args, "--json", "-").output)  # the CPU EP against itself: identical everywhere
    assert host["mode"] == "on-host" and host["first_departure"] is None
    assert all(t["sqnr_vs_simulation_db"] is None and t["local_sqnr_db"] is None for t in host["tensors"])

    refused = run_cli("diverge", fp32, "--reference", fp32)
    assert (
        refused.exit_code != 0 and refused.stderr.startswith("Error: ") and "no quantized activations" in refused.stderr
    )


@pytest.mark.parametrize("floor, eight_bit", [(0.0, "all"), (1.0, "none")])
def test_qnn_activation_types_per_block(tiny_bert, write_recipe, tmp_path, floor, eight_bit):
    """The search's two ends: a budget anything meets puts every block at 8 bits; one nothing meets keeps 16."""
    pytest.importorskip("onnxruntime_qnn")
    recipe = static_recipe(
        tiny_bert,
        ["snapdragon-8-gen-3"],
        activation_type="uint16",
        weight_type="uint8",
        symmetric_weights=False,
        op_types=None,
    )
    recipe["mixed_precision"] = {
        "candidates": ["a8w8", "a16w8"],
        "proxy_samples": 4,
        "budget": {"min_cosine_mean": floor},
    }
    report = api.build(write_recipe(recipe), output=tmp_path / "out").report
    mp = report["mixed_precision"]
    assert report["final_artifact"] == "mixed" and mp["kind"] == "activation-types"
    blocks = {i["name"] for i in mp["islands"]}
    assert {"/embeddings", "/encoder/layer.0/attention", "/encoder/layer.1/output"} <= blocks
    assert all(i["reason"] for i in mp["islands"])
    eight = [i for i in mp["islands"] if i["precision"] == "a8w8"]
    model_level = next(i for i in mp["islands"] if i["name"] == "/model")  # the mask's arithmetic: kept 16-bit
    assert model_level["precision"] == "a16w8" and "not searched" in model_level["reason"]
    if eight_bit == "all":
        assert len(eight) == len(blocks) - 1 and mp["sixteen_bit_activation_share"] < 0.2
    else:
        assert not eight and mp["sixteen_bit_activation_share"] > 0.8 and not mp["budget_met"]
    entry = next(v for v in report["validations"] if v["artifact"] == "mixed")
    assert entry["fallback_nodes"] == 0 and list(entry["placement"]) == ["QNNExecutionProvider"]  # converts included
    assert "## Mixed precision (activation types)" in (tmp_path / "out" / "report.md").read_text()
    sizes = {a["name"]: a["size_ratio"] for a in report["artifacts"]}
    assert sizes["w8a16"] < 0.5  # embedding tables 8-bit, not the activation type


def test_fp32_model_on_the_npu_is_refused_and_preflight_says_why(tiny_onnx, run_cli):
    result = run_cli(
        "validate",
        tiny_onnx,
        "--reference",
        tiny_onnx,
        "--data",
        "recipes/data/validation.txt",
        "--device",
        "snapdragon-8-gen-3",
    )
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"Error: device 'snapdragon-8-gen-3' runs quantized models only and '{tiny_onnx}' is FP32"
    )
    check = run_cli("inspect", tiny_onnx, "--device", "snapdragon-8-gen-3")
    assert check.exit_code == 3
    assert "input 'input_ids' has dynamic dimensions ['batch_size', 'sequence_length']" in check.stdout
    assert "the model is not quantized: QNNExecutionProvider runs quantized models only" in check.stdout


def test_mobile_targets_get_coverage_estimates_and_an_ort_model(tiny_bert, write_recipe, tmp_path):
    import onnxruntime as ort

    recipe = static_recipe(tiny_bert, ["pixel-8", "iphone-15-pro"], op_types=["MatMul", "Gather"])
    out = tmp_path / "out"
    report = api.build(write_recipe(recipe), output=out).report
    assert report["final_ort"] == "final/model.ort"
    for final in ("final", "final-iphone-15-pro"):
        session = ort.InferenceSession(str(out / final / "model.ort"), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert report["finals"] == {
        "pixel-8": {"artifact": "int8", "path": "final/model.onnx"},
        "iphone-15-pro": {"artifact": "fp16", "path": "final-iphone-15-pro/model.onnx"},
    }
    served = {
        v["device"]: v for v in report["validations"] if v["artifact"] == report["finals"][v["device"]]["artifact"]
    }
    assert set(served) == {"pixel-8", "iphone-15-pro"}
    assert not [v for v in report["validations"] if v["device"] == "iphone-15-pro" and v["artifact"] == "int8"]
    for v in served.values():
        assert v["mode"] == "emulated" and v["provider"] == "CPUExecutionProvider" and "not installed here" in v["note"]
        cov = v["coverage"]
        assert cov["estimate"] is True and 0 < cov["supported_nodes"] <= cov["nodes"] and cov["partitions"] >= 1
        assert v["metrics"]["cosine_mean"] > 0.99
    assert {d: v["coverage"]["ep"] for d, v in served.items()} == {
        "pixel-8": "NNAPI",
        "iphone-15-pro": "CoreML (MLProgram)",
    }
    assert served["iphone-15-pro"]["coverage"]["share"] >= 0.9  # the FP16 model, legalized, is CoreML's nearly whole
    legalized = next(s["legalization"] for s in report["stages"] if s["name"] == "legalize")
    assert legalized["rewritten"]["LayerNormalization"] >= 5
    assert legalized["coverage_after"]["nnapi"]["partitions"] < legalized["coverage_before"]["nnapi"]["partitions"]
    import numpy as np  # the rewrites are exact up to rounding: the legalized FP32 model computes the export's numbers

    feed = {
        "input_ids": np.arange(32, dtype=np.int64)[None] % 30 + 5,
        "attention_mask": np.ones((1, 32), np.int64),
        "token_type_ids": np.zeros((1, 32), np.int64),
    }
    feed["attention_mask"][0, 20:] = 0
    outputs = [
        ort.InferenceSession(str(out / f / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        for f in ("fp32", "legalized")
    ]
    assert np.abs(outputs[0] - outputs[1]).max() < 1e-4
    text = (out / "report.md").read_text()
    assert (
        "## Coverage estimates (not a run)" in text
        and "## One artifact per target" in text
        and "## Legalization" in text
    )


def test_nnapi_keeps_excluded_matmuls_in_its_partitions_with_int8_weights(tiny_bert, write_recipe, tmp_path):
    """MatMuls kept out of activation quantization store uint8 weights per tensor (NNAPI's DequantizeLinear rule)
    when the recipe says so: a smaller model, the same NNAPI partitions, FP32 compute."""
    built = {}
    for weights in ("fp32", "int8"):
        recipe = static_recipe(
            tiny_bert,
            ["pixel-8"],
            op_types=["MatMul", "Gather"],
            excluded_weights=weights,
            nodes_to_exclude=["/encoder/layer.*/intermediate/dense/MatMul"],
        )
        built[weights] = api.build(write_recipe(recipe), output=tmp_path / weights).report
    quantize = next(s for s in built["int8"]["stages"] if s["name"] == "quantize")
    assert quantize["excluded_weights_int8"] == 2
    model = onnx.load(str(tmp_path / "int8" / "final" / "model.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    ffn = [n for n in model.graph.node if n.op_type == "MatMul" and "intermediate/dense" in n.name]
    assert len(ffn) == 2
    for node in ffn:  # the activation stays float (not quantized); the weight is uint8 with one scale
        dq = producers[node.input[1]]
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].data_type == onnx.TensorProto.UINT8
        assert list(inits[dq.input[1]].dims) == [] and producers[node.input[0]].op_type != "DequantizeLinear"
    fp32_entry, int8_entry = (
        next(v for v in r["validations"] if v["artifact"] == r["finals"]["pixel-8"]["artifact"])
        for r in (built["fp32"], built["int8"])
    )
    assert int8_entry["coverage"]["partitions"] == fp32_entry["coverage"]["partitions"]
    assert (tmp_path / "int8" / "final" / "model.onnx").stat().st_size < (
        tmp_path / "fp32" / "final" / "model.onnx"
    ).stat().st_size
    assert int8_entry["metrics"]["cosine_mean"] > 0.99 and int8_entry["passed"]


def test_dpu_model_follows_the_xint8_rules(tiny_bert, write_recipe, tmp_path):
    recipe = base_recipe(
        str(tiny_bert),
        targets=["kria-kv260"],
        quantization={
            "mode": "static",
            "format": "qdq",
            "activation_type": "int8",
            "per_channel": False,
            "symmetric_activations": True,
            "op_types": ["MatMul"],
            "calibration": CALIBRATION,
        },
        mixed_precision={"candidates": ["xint8", "fp32"], "proxy_samples": 8, "budget": {"min_cosine_mean": 0.99}},
        validation={"samples": 24, "thresholds": {"cosine_mean": 0.98}},
    )
    out = tmp_path / "out"
    report = api.build(write_recipe(recipe), output=out).report
    model = onnx.load(str(out / "final" / "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        scale, zero = inits[node.input[1]], inits[node.input[2]]
        assert scale.size == 1 and math.log2(float(scale)).is_integer(), node.name
        assert zero.dtype == np.int8 and int(zero) == 0, node.name
    final = next(v for v in report["validations"] if v["artifact"] == "mixed")
    assert final["compliance"]["violations"] == [] and final["compliance"]["dpu_nodes"] > 0
    assert final["mode"] == "emulated" and "shift clamps" in final["note"]
    assert final["metrics"]["cosine_mean"] >= 0.98 and final["passed"]
    uniform = next(s for s in report["stages"] if s["name"] == "quantize")
    assert uniform["power_of_two"]["weights"] > 0 and uniform["power_of_two"]["activations"] > 0


def test_least_error_exponent_can_sit_below_the_no_overflow_one():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(10_000), [40.0]])  # a long tail: one outlier
    no_overflow = math.ceil(math.log2(40.0 / 127))
    assert best_exponent(values) < no_overflow
    assert best_exponent(np.array([1.0, -0.5])) == math.ceil(math.log2(1 / 127))


def test_compliance_names_each_broken_rule():
    from onnx import TensorProto, helper

    def init(name, value, dtype=np.float32):
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_bad_scale"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_bad_scale"),
        helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], name="dq_per_channel"),
        helper.make_node("MatMul", ["xd", "wd"], ["m"], name="on_dpu"),
        helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wc"], name="dq_cpu_weight"),
        helper.make_node("MatMul", ["x", "wc"], ["c"], name="on_cpu"),  # float input: weight-only INT8 on the CPU
        helper.make_node("LayerNormalization", ["xd", "g", "b"], ["y"], name="ln"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [
            init("s", 0.3),
            init("z", 0, np.int8),
            init("w", [1, 2], np.int8),
            init("sw", [0.5, 0.25]),
            init("zw", [3, 0], np.int8),
            init("g", [1.0] * 4),
            init("b", [0.0] * 4),
        ],
    )
    report = dpu_compliance(helper.make_model(graph), ["MatMul"])
    text = "\n".join(report["violations"])
    assert "q_bad_scale: scale 0.3 is not a power of two" in text
    assert "dq_per_channel: per-channel scale (2 values)" in text and "dq_per_channel: zero point" in text
    assert "ln: LayerNormalization is quantized but the DPU does not run it" in text
    assert "dq_cpu_weight" not in text and "on_cpu" not in text and report["cpu_nodes"]["MatMul"] == 1


def test_mask_fill_is_softened(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    assert soften_mask_fill(model, -100.0) >= 1
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        assert not (array.dtype.kind == "f" and array.size and (array < -1e30).any())


def test_a_qnn_profile_that_names_no_htp_generation_is_told_so():
    """Without htp_arch/soc_model the emulator computes as an HTP v68/v69: the validation note says so."""
    pytest.importorskip("onnxruntime_qnn")
    from edgeq.targets.profiles import load_device
    from edgeq.targets.runtime import runtime_for

    named = load_device("snapdragon-8-gen-3")
    ep = named.execution_provider
    unnamed = named.model_copy(
        update={"execution_provider": ep.model_copy(update={"options": {"backend_type": "htp"}})}
    )
    assert "htp_arch" not in runtime_for(named).note and runtime_for(named).mode == "emulated"
    assert "names no htp_arch or soc_model" in runtime_for(unnamed).note
