"""A language model for a phone's NPU on a tiny Llama (random weights: mechanics, not quality): the static-shape
prefill and decode graphs against transformers, and both, quantized by the QNN rules, on the HTP backend with CPU
fallback disabled."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DATA, base_recipe
from tiny_models import make_decoder

from edgeq.export.htp_decoder import export_htp_decoder
from edgeq.static_decoder import KVShape, kv_feed

PREFILL, CACHE = 8, 16


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    folder = make_decoder(tmp_path_factory.mktemp("tiny") / "llama", "llama")  # 4 query heads share 2 KV heads
    config = json.loads((folder / "config.json").read_text())
    dims = (
        config["num_hidden_layers"],
        config["num_key_value_heads"],
        config["hidden_size"] // config["num_attention_heads"],
    )
    return folder, export_htp_decoder(folder, tmp_path_factory.mktemp("graphs"), PREFILL, CACHE, opset=21), dims


def _w8a16(**settings):
    """The HTP's w8a16 QDQ config (calibration data comes as feeds), with `settings` on top."""
    from edgeq.recipe.schema import QuantizationConfig

    return QuantizationConfig(
        mode="static",
        format="qdq",
        activation_type="uint16",
        weight_type="uint8",
        calibration={"data": {"path": "-"}},
        **settings,
    )


def _prompts(graphs, seed: int, tokens: int, count: int) -> list[dict]:
    """`count` feeds of `tokens` random token ids each, on an empty cache."""
    _, _, (layers, kv_heads, head_dim) = graphs
    rng = np.random.default_rng(seed)
    shape = KVShape(tokens, CACHE)
    return [kv_feed(list(rng.integers(3, 700, size=tokens)), shape, layers, kv_heads, head_dim) for _ in range(count)]


def _by_rounding(graphs, feeds: list[dict], tmp_path, **settings) -> tuple[dict, dict]:
    """The prefill graph quantized w8a16 (with `settings`) by round to nearest and by GPTQ, into tmp_path/<rounding>/:
    what each quantization did, and each model's path, by rounding."""
    from edgeq.quantize.run import quantize_model

    done, paths = {}, {}
    for rounding in ("nearest", "gptq"):
        paths[rounding] = tmp_path / rounding / "model.onnx"
        paths[rounding].parent.mkdir()
        config = _w8a16(weight_rounding=rounding, **settings)
        done[rounding] = quantize_model(graphs[1]["prefill"], paths[rounding], config, None, feeds, "qnn")
    return done, paths


def _run(path, feed, provider_session=None) -> dict:
    import onnxruntime as ort

    session = provider_session or ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


@pytest.mark.fast
def test_prefill_and_decode_graphs_compute_what_transformers_does(graphs):
    import torch
    import transformers

    folder, paths, (layers, kv_heads, head_dim) = graphs
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    ids, following = [5, 17, 42, 9, 33], 77
    with torch.no_grad():
        expected = model(torch.tensor([[*ids, following]])).logits[0].numpy()
    prefill = _run(paths["prefill"], kv_feed(ids, KVShape(PREFILL, CACHE), layers, kv_heads, head_dim))
    assert np.abs(prefill["logits"][0, : len(ids)] - expected[: len(ids)]).max() < 1e-4
    cache = {}
    for i in range(layers):
        for kind in ("key", "value"):
            cache[f"past_{kind}.{i}"] = np.zeros((1, kv_heads, CACHE, head_dim), np.float32)
            cache[f"past_{kind}.{i}"][:, :, : len(ids)] = prefill[f"present_{kind}.{i}"][:, :, : len(ids)]
    step = kv_feed([following], KVShape(1, CACHE), layers, kv_heads, head_dim, start=len(ids), cache=cache)
    decoded = _run(paths["decode"], step)
    assert np.abs(decoded["logits"][0, 0] - expected[-1]).max() < 1e-4
    assert np.abs(decoded["logits"][0, 0] - prefill["logits"][0, len(ids) - 1]).max() > 1e-3  # a new token moved it


@pytest.mark.fast  # ten seconds: tiny graphs on the HTP emulator
def test_both_graphs_run_on_the_htp_backend_with_no_cpu_fallback(graphs, tmp_path):
    pytest.importorskip("onnxruntime_qnn")
    from edgeq.quantize.run import quantize_model
    from edgeq.targets import load_target

    _, paths, (layers, kv_heads, head_dim) = graphs
    target = load_target("snapdragon-8-gen-3")
    assert target.profile.session_config["session.disable_cpu_ep_fallback"] == "1"
    config = _w8a16()
    rng = np.random.default_rng(0)
    for name, tokens in (("prefill", PREFILL), ("decode", 1)):
        shape = KVShape(tokens, CACHE)
        feeds = [
            kv_feed(list(rng.integers(3, 700, size=rng.integers(1, tokens + 1))), shape, layers, kv_heads, head_dim)
            for _ in range(6)
        ]
        quantized = tmp_path / name / "model.onnx"
        quantized.parent.mkdir()
        quantize_model(paths[name], quantized, config, None, feeds, "qnn")
        assert _matmul_weight_scales(quantized) == {"per-channel"}  # onnxruntime's QNN config alone gives per-tensor
        session = target.session(quantized)  # fails if any node would fall back to the CPU
        assert session.get_providers()[0] == "QNNExecutionProvider"
        on_htp = _run(quantized, feeds[0], session)
        assert on_htp["logits"].shape == (1, tokens, 800) and np.isfinite(on_htp["logits"]).all()
        assert on_htp["present_key.0"].shape == (1, kv_heads, tokens, head_dim)


@pytest.mark.fast
def test_a_float_residual_stream_stays_out_of_qdq_and_runs_on_the_htp(graphs, tmp_path):
    """quantization.residual_stream: float: the residual Adds and RMSNorms get no Q/DQ, and the HTP takes the mixed
    graph (its FP16 beside the quantized matmuls) with CPU fallback disabled."""
    pytest.importorskip("onnxruntime_qnn")
    import onnx

    from edgeq.quantize.run import quantize_model
    from edgeq.targets import load_target

    _, paths, (layers, _, _) = graphs
    # per column the HTP takes symmetric weights only: the MatMuls' stay symmetric
    config = _w8a16(residual_stream="float", symmetric_weights=False)
    feeds = _prompts(graphs, 1, PREFILL, 4)
    quantized = tmp_path / "model.onnx"
    done = quantize_model(paths["prefill"], quantized, config, None, feeds, "qnn")
    assert done["residual_stream_float"]["nodes"] == 4 * layers + 1  # two Adds and two norms a layer, the final norm
    model = onnx.load(str(quantized))
    residual_adds = [n for n in model.graph.node if n.name.endswith("_residual")]
    assert len(residual_adds) == 2 * layers
    for node in residual_adds:
        consumers = [n.op_type for n in model.graph.node if node.output[0] in n.input]
        assert "QuantizeLinear" not in consumers
    session = load_target("snapdragon-8-gen-3").session(quantized)  # fails if any node would fall back to the CPU
    logits = _run(quantized, feeds[0], session)["logits"]
    simulated = _run(quantized, feeds[0])["logits"]
    assert np.isfinite(logits).all() and np.corrcoef(logits.ravel(), simulated.ravel())[0, 1] > 0.99


def test_an_8_bit_kv_cache_on_the_htp(graphs, tmp_path):
    """quantization.kv_cache: int8 on a static pair: the cache inputs and outputs take 8-bit encodings (the rest 16),
    the decode graph runs on the HTP with CPU fallback disabled, and the roofline counts a byte a cached entry."""
    pytest.importorskip("onnxruntime_qnn")
    import onnx
    from onnx import numpy_helper

    from edgeq.quantize.run import quantize_model
    from edgeq.roofline import _cache_bytes
    from edgeq.targets import load_target

    _, paths, (layers, kv_heads, head_dim) = graphs
    feeds = _prompts(graphs, 3, 1, 4)
    cache_bytes = {}
    for kv in ("fp32", "int8"):
        quantized = tmp_path / kv / "decode.onnx"
        quantized.parent.mkdir()
        done = quantize_model(paths["decode"], quantized, _w8a16(kv_cache=kv), None, feeds, "qnn")
        model = onnx.load(str(quantized))
        zero_points = {t.name: numpy_helper.to_array(t).dtype for t in model.graph.initializer}
        widths = {
            n.input[0]: zero_points[n.input[2]]
            for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0].startswith(("past_", "present_"))
        }
        cache_bytes[kv] = _cache_bytes(model, CACHE)
        if kv == "int8":
            assert done["kv_cache_int8"]["tensors"] == 4 * layers
            assert len(widths) == 4 * layers and set(widths.values()) == {np.dtype("uint8")}
            assert np.dtype("uint16") in {
                zero_points[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"
            }
            session = load_target("snapdragon-8-gen-3").session(quantized)  # fails if a node would fall back
            assert np.isfinite(_run(quantized, feeds[0], session)["logits"]).all()
        else:
            assert "kv_cache_int8" not in done and set(widths.values()) == {np.dtype("uint16")}
    assert cache_bytes["int8"] * 2 == cache_bytes["fp32"] == 2 * layers * kv_heads * CACHE * head_dim * 2


def test_gptq_rounding_lowers_the_output_error_on_the_same_grid(graphs, tmp_path):
    """weight_rounding: gptq keeps every scale and zero point of round to nearest's model, changes codes, lowers the
    MatMuls' output error on the calibration tokens, and the HTP takes the model (random weights: mechanics)."""
    pytest.importorskip("onnxruntime_qnn")
    import onnx
    from onnx import numpy_helper

    from edgeq.targets import load_target

    _, _, (layers, _, _) = graphs
    feeds = _prompts(graphs, 4, PREFILL, 8)
    done, paths = _by_rounding(graphs, feeds, tmp_path)
    models = {
        r: {t.name: numpy_helper.to_array(t) for t in onnx.load(str(p)).graph.initializer} for r, p in paths.items()
    }
    rounded = done["gptq"]["weight_rounding"]
    assert rounded["matmuls"] == 7 * layers + 1 and rounded["calibration_tokens"] == 8 * PREFILL  # and the LM head
    assert 0 < rounded["output_error_vs_nearest"] < 0.9
    encodings = [n for n in models["nearest"] if n.endswith(("_scale", "_zero_point"))]
    assert all(np.array_equal(models["nearest"][n], models["gptq"][n]) for n in encodings)
    changed = [
        n
        for n in models["nearest"]
        if n.endswith("_quantized") and not np.array_equal(models["nearest"][n], models["gptq"][n])
    ]
    assert len(changed) >= 7 * layers
    session = load_target("snapdragon-8-gen-3").session(tmp_path / "gptq" / "model.onnx")
    assert np.isfinite(_run(tmp_path / "gptq" / "model.onnx", feeds[0], session)["logits"]).all()


def test_an_8_bit_kv_cache_needs_the_htp_and_static_mode(graphs, write_recipe, run_cli):
    recipe = base_recipe(
        str(graphs[0]),
        model={"task": "text-generation"},
        export={"decoder": "static", "batch_size": 1, "sequence_length": 16, "kv_cache_length": 32},
        quantization={
            "mode": "static",
            "kv_cache": "int8",
            "calibration": {"data": {"path": "data/calibration.txt"}, "samples": 8},
        },
    )  # the host's CPU target: onnxruntime's scheme, not the HTP's
    result = run_cli("build", write_recipe(recipe))
    assert result.exit_code == 1 and "kv_cache: int8 on a static decoder pair is the HTP's" in result.stderr


def _matmul_weight_scales(path) -> set[str]:
    """'per-channel' or 'per-tensor' for each MatMul whose B is a dequantized initializer."""
    import onnx

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    made_by = {o: n for n in model.graph.node for o in n.output}
    kinds = set()
    for node in model.graph.node:
        weight = made_by.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is not None and weight.op_type == "DequantizeLinear" and weight.input[0] in inits:
            kinds.add("per-channel" if len(inits[weight.input[1]].dims) == 1 else "per-tensor")
    return kinds


def _initializers(path, suffix: str) -> dict:
    """The initializers of the model at `path` whose names end with `suffix`, as arrays by name."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith(suffix)}


def _static_pair_recipe(graphs, quantization: dict, **sections) -> dict:
    """A recipe building the tiny Llama as a static pair (prefill 16, cache 32) for the Snapdragon's HTP, w8a16 with
    GPTQ codes and `quantization` on top; `sections` (validation, mixed_precision) as given."""
    return base_recipe(
        str(graphs[0]),
        model={"task": "text-generation"},
        export={"decoder": "static", "batch_size": 1, "sequence_length": 16, "kv_cache_length": 32},
        quantization={
            "mode": "static",
            "format": "qdq",
            "activation_type": "uint16",
            "weight_type": "uint8",
            "weight_rounding": "gptq",
            "op_types": None,
            "calibration": {"data": {"path": "data/calibration.txt"}, "samples": 8},
            **quantization,
        },
        targets=["snapdragon-8-gen-3"],
        **sections,
    )


def test_a_static_decoder_build_validates_both_graphs_on_the_htp(graphs, write_recipe, tmp_path):
    """export.decoder: static end to end: the pair exported, quantized with one set of encodings (the 4-bit MatMuls
    chosen under a byte budget, low-power block scales), validated on the emulated HTP (the prefill's logits; greedy
    continuations through the decode graph) beside its simulation."""
    pytest.importorskip("onnxruntime_qnn")
    from edgeq import api
    from edgeq.recipe.schema import DataSource

    recipe = _static_pair_recipe(
        graphs,
        # 8-bit weights take 0.54 of FP16's here: edgeq chooses the 4-bit MatMuls
        {"four_bit_budget": 0.45, "four_bit_scales": "uint8"},
        validation={"samples": 8, "warmup": 0, "thresholds": {}, "emulated_samples": 6, "emulated_follow_ups": 2},
    )
    out = tmp_path / "out"
    report = api.build(write_recipe(recipe), output=out).report
    (entry,) = report["validations"]
    assert entry["artifact"] == "w4w8a16" and entry["mode"] == "emulated" and entry["fallback_nodes"] == 0
    assert entry["decode_graph"]["fallback_nodes"] == 0 and list(entry["decode_graph"]["placement"]) == [
        "QNNExecutionProvider"
    ]
    metrics = entry["metrics"]
    assert metrics["tokens"] > 8 and 0 <= metrics["next_token_top1_agreement"] <= 1
    assert metrics["greedy_match_tokens"] is not None and metrics["perplexity"] > 1
    assert entry["samples"] == 6 and metrics["greedy_prompts"] == 2  # the emulator's bounds, stated
    assert entry["simulation"]["metrics"]["kl_divergence_mean"] is not None
    roofline = entry["roofline"]  # bytes a token moves at the profile's bandwidth: labelled an estimate
    assert roofline["estimate"] and roofline["memory_bandwidth_gbps"] == 76.8
    assert roofline["tokens_per_s"] == pytest.approx(76.8e9 / roofline["bytes_per_token"], rel=1e-3)
    assert roofline["kv_cache_bytes_per_token"] == 2 * 2 * 2 * 32 * 16 * 2  # layers, K and V, kv heads, L, D, u16
    quantize = next(s for s in report["stages"] if s["name"] == "quantize")
    assert (
        quantize["decode_graph"]["encodings_of_its_own"] == 0
        and quantize["decode_graph"]["encodings_from_prefill"] > 50
    )
    # the cache inputs read what the graphs wrote: calibrated on an empty cache, their own scale would be ~1e-9
    assert quantize["decode_graph"]["cache_inputs_encoded_as_written"] == 2 * 2  # layers, K and V
    for graph in ("model.onnx", "decode.onnx"):
        scales = _initializers(out / "final" / graph, "_scale")
        for name in ("key.0", "value.1"):
            assert scales[f"past_{name}_scale"] == scales[f"present_{name}_scale"] > 1e-6
    assert quantize["weight_rounding"]["matmuls"] > 0 and "weight_rounding" not in quantize["decode_graph"]
    codes = [_initializers(out / "final" / g, "_quantized") for g in ("model.onnx", "decode.onnx")]
    assert codes[0].keys() == codes[1].keys() and all(np.array_equal(codes[0][n], codes[1][n]) for n in codes[0])
    four_bit = [
        n for n in codes[1] if codes[1][n].dtype.name == "int4"
    ]  # the decode graph's 4-bit codes: the prefill's
    search = quantize["four_bit_weights"]["search"]
    assert len(four_bit) == len(quantize["four_bit_weights"]["matmuls"]) > 0 and search["bytes_vs_fp16"] <= 0.45
    markdown = (out / "report.md").read_text()
    assert (
        f"MatMuls (chosen by measured sensitivity (quantization.four_bit_budget 0.45): the {len(four_bit)}" in markdown
    )
    assert "| rank | MatMul | KL per token vs FP32 | MB saved | weights |" in markdown
    assert {"model.onnx", "decode.onnx", "static_decoder.json"} <= {p.name for p in (out / "final").iterdir()}
    assert not (out / "final" / "genai_config.json").exists()  # onnxruntime-genai cannot run a static pair
    # `edgeq validate` of the pair (CPU EP) reads its texts at the graph's 16 tokens, whatever length is asked
    again = api.validate(
        out / "final" / "model.onnx",
        out / "fp32" / "model.onnx",
        DataSource(path=DATA / "calibration.txt"),
        samples=2,
        sequence_length=64,
    )
    assert again["shapes"][0]["shape"] == "b1-s16" and again["metrics"]["tokens"] <= 2 * 16


def test_activation_types_per_block_on_a_static_pair(graphs, write_recipe, tmp_path):
    """mixed_precision [a8w8, a16w8] on a static pair: a budget anything meets puts every block at 8-bit activations,
    in the prefill graph and in the decode graph alike (one set of encodings); the weights stay the quantize stage's
    (GPTQ's codes); both graphs run on the emulated HTP with no fallback (random weights: mechanics)."""
    pytest.importorskip("onnxruntime_qnn")
    import onnx

    from edgeq import api

    recipe = _static_pair_recipe(
        graphs,
        {"residual_stream": "float"},
        mixed_precision={
            "candidates": ["a8w8", "a16w8"],
            "proxy_samples": 4,
            "budget": {"min_cosine_mean": None, "floors": {"next_token_top1_agreement": 0.0}},
        },
        validation={"samples": 6, "warmup": 0, "thresholds": {}, "emulated_samples": 4, "emulated_follow_ups": 1},
    )
    out = tmp_path / "out"
    report = api.build(write_recipe(recipe), output=out).report
    mp = report["mixed_precision"]
    assert report["final_artifact"] == "mixed" and mp["kind"] == "activation-types" and mp["budget_met"]
    blocks = {i["name"] for i in mp["islands"] if i["precision"] == "a8w8"}
    assert {"/model/layers.0/self_attn", "/model/layers.1/mlp"} <= blocks
    assert mp["decode_graph"]["encodings_of_its_own"] == 0 and mp["decode_graph"]["encodings_from_prefill"] > 50

    def eight_bit(graph: str) -> set[str]:
        model = onnx.load(str(out / "mixed" / graph))
        zero_points = {t.name: t.data_type for t in model.graph.initializer}
        return {
            n.input[0]
            for n in model.graph.node
            if n.op_type == "QuantizeLinear" and zero_points.get(n.input[2]) == onnx.TensorProto.UINT8
        }

    prefill, decode = eight_bit("model.onnx"), eight_bit("decode.onnx")
    assert len(prefill) > 20 and decode == prefill  # the decode graph's 8-bit tensors: the prefill's

    # the 8 <-> 16-bit converts' encodings too
    own, theirs = (_initializers(out / "mixed" / graph, "_convert") for graph in ("decode.onnx", "model.onnx"))
    assert own and all(name in theirs and np.array_equal(own[name], theirs[name]) for name in own)
    kept, searched = (_initializers(out / folder / "model.onnx", "_quantized") for folder in ("w8a16", "mixed"))
    weights = [n for n in kept if kept[n].dtype != np.int32]
    assert weights and all(np.array_equal(kept[n], searched[n]) for n in weights)  # GPTQ's codes, not re-rounded
    entry = next(v for v in report["validations"] if v["artifact"] == "mixed")
    assert entry["mode"] == "emulated" and entry["fallback_nodes"] == 0
    assert entry["decode_graph"]["fallback_nodes"] == 0 and entry["metrics"]["greedy_match_tokens"] is not None


@pytest.mark.fast  # tiny graphs on the HTP emulator
def test_four_bit_block_weights_run_on_the_htp_and_gptq_lowers_their_error(graphs, tmp_path):
    """quantization.four_bit_weights: the named MatMuls take int4 codes in DequantizeLinear's blocked form (axis 0,
    32 input rows a scale, no zero point), the others keep 8 bits; GPTQ's codes move the layers' output less than
    round to nearest's; the HTP takes the model with CPU fallback disabled; the roofline counts half a byte a
    weight (random weights: mechanics)."""
    pytest.importorskip("onnxruntime_qnn")
    import onnx

    from edgeq.errors import RecipeError
    from edgeq.quantize.numerics import INT4_BLOCK
    from edgeq.quantize.run import quantize_model
    from edgeq.roofline import _weight_bytes_per_token
    from edgeq.targets import load_target

    _, paths, (layers, _, _) = graphs
    feeds = _prompts(graphs, 5, PREFILL, 8)
    done, _ = _by_rounding(graphs, feeds, tmp_path, four_bit_weights=["*/mlp/gate_proj/MatMul", "*/mlp/up_proj/MatMul"])
    four = done["gptq"]["four_bit_weights"]
    assert len(four["matmuls"]) == 2 * layers and four["block_size"] == INT4_BLOCK
    assert 0 < four["relative_output_error"] < done["nearest"]["four_bit_weights"]["relative_output_error"]
    assert done["gptq"]["weight_rounding"]["matmuls"] == 5 * layers + 1  # GPTQ's 8-bit pass: the other MatMuls
    model = onnx.load(str(tmp_path / "gptq" / "model.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    made_by = {o: n for n in model.graph.node for o in n.output}
    blocked = {}
    for node in (n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in made_by):
        dq = made_by[node.input[1]]
        if dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            blocked[node.name] = inits[dq.input[0]].data_type == onnx.TensorProto.INT4
            if blocked[node.name]:
                k, n = inits[dq.input[0]].dims
                assert len(dq.input) == 2 and list(inits[dq.input[1]].dims) == [-(-k // INT4_BLOCK), n]
    assert sorted(name for name, four_bit in blocked.items() if four_bit) == sorted(four["matmuls"])
    assert sum(not b for b in blocked.values()) == 5 * layers + 1
    eight = tmp_path / "eight.onnx"
    quantize_model(paths["prefill"], eight, _w8a16(), None, feeds, "qnn")
    assert _weight_bytes_per_token(model) < _weight_bytes_per_token(onnx.load(str(eight)))
    assert (tmp_path / "gptq" / "model.onnx").stat().st_size < eight.stat().st_size  # codes packed two a byte
    session = load_target("snapdragon-8-gen-3").session(tmp_path / "gptq" / "model.onnx")  # fails on a fallback
    on_htp = _run(tmp_path / "gptq" / "model.onnx", feeds[0], session)["logits"]
    simulated = _run(tmp_path / "gptq" / "model.onnx", feeds[0])["logits"]
    assert np.isfinite(on_htp).all() and np.corrcoef(on_htp.ravel(), simulated.ravel())[0, 1] > 0.95
    with pytest.raises(RecipeError, match="match no quantized MatMul"):
        quantize_model(
            paths["prefill"], tmp_path / "none.onnx", _w8a16(four_bit_weights=["*/nothing"]), None, feeds, "qnn"
        )


@pytest.mark.fast
def test_a_four_bit_budget_chooses_the_matmuls_by_measured_sensitivity(tmp_path):
    """quantization.four_bit_budget: each MatMul's loss (the task's proxy, KL) with its weight alone at 4 bits is
    measured; the search takes the least loss per byte saved first until the weights fit. On a tiny Llama whose
    layer-1 value projection is planted sensitive to 4-bit rounding (huge weights on an always-zero input
    channel), that MatMul measures the largest loss and stays at 8 bits; the chosen ones are the first in the
    order; the written model's MatMul weights fit the budget; a recorded loss is the KL of the codes written; a
    budget below every MatMul at 4 bits is an error (random weights: mechanics)."""
    import onnx
    from onnx import numpy_helper

    from edgeq.errors import RecipeError
    from edgeq.pipeline import proxy_loss
    from edgeq.quantize.four_bit import stored_bytes
    from edgeq.quantize.four_bit_budget import Budget
    from edgeq.quantize.numerics import dequantize_blocks
    from edgeq.quantize.run import quantize_model
    from edgeq.tasks import get_task
    from edgeq.tasks.base import Batch, Sample

    folder = make_decoder(tmp_path / "planted", "llama", planted=True)
    config = json.loads((folder / "config.json").read_text())
    dims = (config["num_hidden_layers"], config["num_key_value_heads"], 16)
    prefill = export_htp_decoder(folder, tmp_path / "graphs", PREFILL, CACHE, opset=21)["prefill"]
    feeds = _prompts((folder, None, dims), 7, PREFILL, 6)
    task = get_task("text-generation")
    batches = [Batch(f, np.ones((1, PREFILL), np.int64), [Sample(text="")]) for f in feeds[:4]]
    budget = Budget(0.4, [b.feed for b in batches], lambda r, c: proxy_loss(task, batches, r, c), "KL")
    out = tmp_path / "w4" / "model.onnx"
    out.parent.mkdir()
    config = _w8a16(four_bit_budget=0.4, four_bit_search_samples=4)
    four = quantize_model(prefill, out, config, None, feeds, "qnn", four_bit_budget=budget)["four_bit_weights"]
    search = four["search"]
    by_name = {c["matmul"]: c for c in search["candidates"]}
    planted = "/model/layers.1/self_attn/v_proj/MatMul"
    others = [c["loss"] for name, c in by_name.items() if name != planted]
    assert by_name[planted]["loss"] > 3 * max(others) and not by_name[planted]["four_bit"]
    assert min(others) > 0
    chosen = [c for c in by_name.values() if c["four_bit"]]
    assert 0 < len(chosen) < len(by_name)
    last = max(c["rank"] for c in chosen)  # the chosen come first in the order (the search stops once they fit)
    assert all(by_name[n]["four_bit"] for n in by_name if by_name[n]["rank"] == 0) and last < len(by_name) - 1
    assert sorted(four["matmuls"]) == sorted(n for n, c in by_name.items() if c["four_bit"])

    fp32, model = onnx.load(str(prefill)), onnx.load(str(out))
    inits = {t.name: t for t in model.graph.initializer}
    made_by = {o: n for n in model.graph.node for o in n.output}
    stored = fp16 = 0.0
    for node in (n for n in model.graph.node if n.op_type == "MatMul" and n.name in by_name):
        dq = made_by[node.input[1]]
        stored += sum(stored_bytes(inits[name]) for name in dq.input)
        fp16 += 2 * np.prod(inits[dq.input[0]].dims)
    assert stored / fp16 <= 0.4 and abs(stored / fp16 - search["bytes_vs_fp16"]) < 0.01
    assert all((stored + c["bytes_saved"]) / fp16 > 0.4 for c in chosen)  # none unneeded: each back at 8 bits won't fit
    assert search["eight_bit_bytes_vs_fp16"] > 0.45  # 8-bit per column: about half of FP16

    name = four["matmuls"][0]  # the loss recorded for it is the KL of the codes written, measured anew
    dq = made_by[next(n for n in model.graph.node if n.name == name).input[1]]
    written = dequantize_blocks(numpy_helper.to_array(inits[dq.input[0]]), numpy_helper.to_array(inits[dq.input[1]]))
    float_matmul = next(n for n in fp32.graph.node if n.name == name)
    swapped = onnx.load(str(prefill))
    table = next(t for t in swapped.graph.initializer if t.name == float_matmul.input[1])
    table.CopyFrom(numpy_helper.from_array(written.astype(np.float32), table.name))
    swapped_path = tmp_path / "swapped.onnx"
    onnx.save(swapped, str(swapped_path))
    reference = [_run(prefill, f) for f in budget.feeds]
    measured = proxy_loss(task, batches, reference, [_run(swapped_path, f) for f in budget.feeds])
    assert measured == pytest.approx(by_name[name]["loss"], rel=1e-3, abs=1e-7)

    with pytest.raises(RecipeError, match="below what these weights can take"):
        quantize_model(
            prefill,
            tmp_path / "low.onnx",
            _w8a16(four_bit_budget=0.2),
            None,
            feeds,
            "qnn",
            four_bit_budget=Budget(0.2, budget.feeds, budget.loss),
        )


@pytest.mark.fast
def test_uint8_block_scales_take_the_htps_low_power_form(graphs, tmp_path):
    """quantization.four_bit_scales: uint8: each 4-bit weight's block scales are uint8 multiples of a float step a
    column, dequantized by a per-column DequantizeLinear that feeds the blocked one (with an INT4 zero point):
    onnxruntime-qnn fuses that into the HTP's MatMul (session with CPU fallback disabled); its bytes are what the
    budget counts (1.5 a block, 5 a column: fewer than float's 4 a block once a column holds 3 blocks or more);
    the layers' output error stays close to float scales' (random weights: mechanics)."""
    pytest.importorskip("onnxruntime_qnn")
    import onnx
    from onnx import numpy_helper

    from edgeq.quantize.four_bit import stored_bytes
    from edgeq.quantize.numerics import dequantize_blocks
    from edgeq.targets import load_target

    feeds = _prompts(graphs, 5, PREFILL, 8)
    patterns = ["*/mlp/gate_proj/MatMul", "*/mlp/up_proj/MatMul"]
    done, paths = {}, {}
    for form in ("float", "uint8"):
        (tmp_path / form).mkdir()
        done[form], paths[form] = _by_rounding(
            graphs, feeds, tmp_path / form, four_bit_weights=patterns, four_bit_scales=form
        )
    four = {form: done[form]["gptq"]["four_bit_weights"] for form in done}
    assert four["uint8"]["relative_output_error"] < 1.2 * four["float"]["relative_output_error"]
    path = paths["uint8"]["gptq"]
    model = onnx.load(str(path))
    tensors = {t.name: t for t in model.graph.initializer}
    inits = {name: numpy_helper.to_array(t) for name, t in tensors.items()}
    made_by = {o: n for n in model.graph.node for o in n.output}
    for name in four["uint8"]["matmuls"]:
        weight_dq = made_by[next(n for n in model.graph.node if n.name == name).input[1]]
        scale_dq = made_by[weight_dq.input[1]]
        levels, step = inits[scale_dq.input[0]], inits[scale_dq.input[1]]
        assert levels.dtype == np.uint8 and step.shape == (levels.shape[1],) and not inits[weight_dq.input[2]].any()
        assert 1 <= levels.min() and levels.max() <= 16  # the HTP's block scales are 4-bit
        block_scales = levels * step  # what the scale's DequantizeLinear makes, the blocked one's scale
        assert np.abs(dequantize_blocks(inits[weight_dq.input[0]], block_scales)).max() > 0
        stored = sum(stored_bytes(tensors[n]) for n in [*weight_dq.input[::2], *scale_dq.input])
        (k, n), blocks = inits[weight_dq.input[0]].shape, levels.shape[0]
        assert stored == k * n / 2 + blocks * n * 1.5 + n * 5  # what the budget counts (1.5 B a block, 5 a column)
    session = load_target("snapdragon-8-gen-3").session(path)  # fails on a fallback
    on_htp = _run(path, feeds[0], session)["logits"]
    simulated = _run(path, feeds[0])["logits"]
    assert np.isfinite(on_htp).all() and np.corrcoef(on_htp.ravel(), simulated.ravel())[0, 1] > 0.95


@pytest.mark.fast
def test_low_power_blocks_compute_on_the_htp_as_on_the_cpu(tmp_path):
    """One MatMul [576 x 64] whose columns mix small and large blocks (so block scales span 1..16 steps), quantized
    with 4-bit uint8-scale blocks by edgeq's writer: the emulated HTP's output is the CPU EP's to 4 output steps.
    (Block scales above 16 steps made the HTP compute garbage while the CPU EP was right: top-1 0.018 on SmolLM2.)"""
    pytest.importorskip("onnxruntime_qnn")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeq.quantize.run import quantize_model
    from edgeq.targets import load_target

    rng = np.random.default_rng(3)
    weight = rng.standard_normal((576, 64)) * 0.02
    weight[rng.random(576) < 0.05] *= 12  # a few large input rows: blocks of very different ranges
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/proj/MatMul")],
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 576])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 64])],
        [numpy_helper.from_array(weight.astype(np.float32), "w")],
    )
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(fp32))
    feeds = [{"x": rng.standard_normal((1, 16, 576)).astype(np.float32)} for _ in range(4)]
    out = tmp_path / "w4.onnx"
    quantize_model(fp32, out, _w8a16(four_bit_weights=["*"], four_bit_scales="uint8"), None, feeds, "qnn")
    model = onnx.load(str(out))
    levels = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("_blocks"))
    assert levels.max() == 16 and levels.min() < 8
    session = load_target("snapdragon-8-gen-3").session(out)  # fails on a fallback
    step = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "y_scale")
    for feed in feeds:
        on_htp, simulated = session.run(None, feed)[0], _run(out, feed)["y"]
        assert np.abs(on_htp - simulated).max() <= 4.01 * step  # the HTP accumulates its own way: 1 to 3 steps
