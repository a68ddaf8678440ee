"""Language models on tiny random decoders (GPT-2, Llama, Qwen2) built from configs: export with a KV cache,
cache-vs-no-cache equality, 4-bit packing, the memory planner's arithmetic, and the mixed-precision search on a
planted sensitive projection. Random weights prove mechanics, never quality."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import DATA, ROOT, base_recipe
from onnx import helper
from tiny_models import DECODERS, PLANTED_DECODER_ISLAND, decoder_config, make_decoder, save_tokenizer

from edgeq import api
from edgeq.feeds import feed_for
from edgeq.mixed_precision.candidates import int4_blocks, int4_gptq, matmul_int4
from edgeq.plan import model_shape
from edgeq.tasks import TASKS


def assert_error(result, line: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [line]


@pytest.fixture(scope="module", params=DECODERS)
def exported(request, tmp_path_factory):
    folder = make_decoder(tmp_path_factory.mktemp(request.param), request.param)
    return request.param, api.export(str(folder), tmp_path_factory.mktemp(f"{request.param}-onnx") / "fp32")


def test_export_carries_a_kv_cache(exported):
    arch, path = exported
    model = onnx.load(str(path), load_external_data=False)
    inputs, outputs = [i.name for i in model.graph.input], [o.name for o in model.graph.output]
    assert {"input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.1.value"} <= set(inputs)
    assert outputs[0] == "logits" and {"present.0.key", "present.1.value"} <= set(outputs)
    assert not any(n.op_type == "Gemm" for n in model.graph.node)  # GPT-2's Conv1D became MatMul + Add


def test_the_cache_gives_the_logits_of_the_whole_text(exported):
    _, path = exported
    task = TASKS["text-generation"]
    inputs = task.inputs(path.parent, 64, False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    full = inputs.encode(["The river Avon runs through the town and floods the meadows most winters."])
    whole = dict(zip(names, session.run(None, feed_for(session.get_inputs(), full))))["logits"][0]
    ids, split = full["input_ids"], 6
    mask = np.ones((1, split), np.int64)
    step = {"input_ids": ids[:, :split], "attention_mask": mask, **inputs.step_inputs(ids[:, :split], mask, None)}
    produced = [dict(zip(names, session.run(None, feed_for(session.get_inputs(), step))))]
    for position in range(split, ids.shape[1]):
        mask = np.ones((1, position + 1), np.int64)
        past = {n.replace("present", "past_key_values"): v for n, v in produced[-1].items() if n.startswith("present")}
        token = ids[:, position : position + 1]
        step = {"input_ids": token, "attention_mask": mask, **inputs.step_inputs(token, mask, past)}
        produced.append(dict(zip(names, session.run(None, feed_for(session.get_inputs(), step)))))
    cached = np.concatenate([p["logits"][0] for p in produced])
    assert cached.shape == whole.shape and np.abs(cached - whole).max() < 1e-4


def test_int4_packing_matches_its_own_dequantization():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(70, 24)).astype(np.float32)  # K not a multiple of the block: padded
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    errors = {}
    for importance in (None, rng.uniform(0.1, 2.0, size=70)):
        candidate = matmul_int4(node, weight, importance)
        graph = helper.make_graph(
            candidate.nodes,
            "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 70])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 24])],
            candidate.initializers,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
        )
        x = rng.normal(size=(3, 70)).astype(np.float32)
        got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        codes, scale, zero = int4_blocks(weight, importance)
        dequantized = ((codes.astype(np.float32) - zero[..., None]) * scale[..., None]).reshape(24, -1)[:, :70].T
        assert np.abs(got - x @ dequantized).max() < 1e-3
        errors[importance is None] = dequantized - weight
    assert np.abs(errors[True]).max() < 0.5 * np.abs(weight).max() / 8 + 1e-6  # round to nearest: within half a step
    weighted = lambda error: float((importance[:, None] * error**2).sum())  # noqa: E731
    assert weighted(errors[False]) < weighted(errors[True])  # the importance-weighted ranges do better where it counts


def test_gptq_lowers_the_output_error_on_correlated_inputs():
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(64, 16)).astype(np.float32)
    mixing = rng.normal(size=(64, 64)) * 0.3 + np.eye(64)
    rows = (rng.normal(size=(512, 64)) @ mixing).astype(np.float32)  # correlated input dimensions, as in a real layer
    held_out = (rng.normal(size=(256, 64)) @ mixing).astype(np.float32)

    def output_error(codes, scale, zero):
        dequantized = ((codes.astype(np.float32) - zero[..., None]) * scale[..., None]).reshape(16, -1)[:, :64].T
        return float(((held_out @ dequantized - held_out @ weight) ** 2).mean())

    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    assert matmul_int4(node, weight, samples=rows).detail["method"] == "GPTQ"
    assert output_error(*int4_gptq(weight, rows)) < 0.8 * output_error(*int4_blocks(weight))


def test_block_gptq_in_the_htp_form_beats_round_to_nearest_on_held_out_inputs():
    """The HTP's 4-bit block form (symmetric codes in [-8, 7], one scale per 32 input rows and column): GPTQ's codes
    give a lower output error than round to nearest on inputs it never saw, and every code dequantizes within its
    block's range."""
    from edgeq.quantize.numerics import block_gptq

    rng = np.random.default_rng(2)
    weight = rng.normal(size=(96, 24))
    mixing = rng.normal(size=(96, 96)) * 0.3 + np.eye(96)
    rows, held_out = (rng.normal(size=(n, 96)) @ mixing for n in (512, 256))
    codes, scales = block_gptq(weight, rows.T @ rows / len(rows))
    assert codes.dtype == np.int8 and codes.min() >= -8 and codes.max() <= 7 and scales.shape == (3, 24)
    nearest_scales = np.abs(weight.reshape(3, 32, 24)).max(axis=1) / 7
    nearest = np.clip(np.round(weight.reshape(3, 32, 24) / nearest_scales[:, None]), -8, 7)

    def error(dequantized) -> float:
        return float(((held_out @ dequantized.reshape(96, 24) - held_out @ weight) ** 2).mean())

    gptq = codes.reshape(3, 32, 24) * scales[:, None]
    assert error(gptq) < 0.8 * error(nearest * nearest_scales[:, None])


@pytest.mark.parametrize("arch", DECODERS)
def test_planner_counts_the_parameters_pytorch_has(arch, tmp_path):
    import transformers

    vocab = save_tokenizer("roberta", tmp_path)
    config = decoder_config(arch, vocab)
    model = transformers.AutoModelForCausalLM.from_config(config)
    counted = sum(p.numel() for p in model.parameters())
    assert model_shape(config.to_dict()).parameters == counted


def test_plan_for_a_7b_config_at_4096_tokens_in_8_gb(run_cli, tmp_path):
    shipped = json.loads((ROOT / "examples" / "configs" / "llama-2-7b" / "config.json").read_text())
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    }
    assert {k: shipped[k] for k in config} == config  # the README's example config is Llama-2-7B's shape
    (tmp_path / "config.json").write_text(json.dumps(config))
    out = tmp_path / "plan.json"
    result = run_cli(
        "plan", tmp_path, "--device", "snapdragon-8-gen-3", "--context", "4096", "--memory-mb", "8192", "--json", out
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(out.read_text())
    options = {o["precision"]: o for o in plan["options"]}
    assert plan["model"]["parameters"] == 6_738_415_616  # Llama-2-7B's published count
    assert not options["fp16"]["fits"] and options["int4"]["fits"] and plan["largest_fitting"] == "int4"
    arithmetic = 6_738_415_616 * (
        4 / 8 + 4 / 32 + 0.5 / 32
    )  # 4-bit weights, an FP32 scale and a 4-bit zero point per 32
    assert abs(options["int4"]["weights_bytes"] / arithmetic - 1) < 0.02
    assert (
        options["int4"]["kv_cache_bytes"] == 2 * 32 * 32 * 128 * 4096 * 2 and options["int4"]["kv_dtype"] == "float16"
    )
    assert "int4" in result.output or out.is_file()
    assert options["int4"]["prepacked_bytes"] == 0 and options["int4"]["runtime_bytes"] == 55 * 2**20  # an NPU: no MLAS
    on_cpu = run_cli("plan", tmp_path, "--device", "raspberry-pi-5", "--context", "4096", "--json", out)
    assert on_cpu.exit_code == 0, on_cpu.output
    int4 = next(o for o in json.loads(out.read_text())["options"] if o["precision"] == "int4")
    assert abs(int4["prepacked_bytes"] / (plan["model"]["parameters"] * 0.75) - 1) < 0.01
    assert int4["total_bytes"] == sum(
        int4[k] for k in ("runtime_bytes", "weights_bytes", "prepacked_bytes", "kv_cache_bytes", "workspace_bytes")
    )


def _plan(run_cli, tmp_path, *args) -> dict:
    out = tmp_path / "plan.json"
    result = run_cli("plan", *args, "--json", out)
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(out.read_text())


def test_the_plan_gives_each_precision_its_longest_context_and_the_kv_dtype_its_bytes(run_cli, tmp_path):
    from edgeq.plan import model_shape, read_config, total_bytes
    from edgeq.targets.profiles import load_device

    config = ROOT / "examples" / "configs" / "llama-2-7b"
    fp32 = _plan(run_cli, tmp_path, config, "--device", "raspberry-pi-5", "--context", "4096")
    int8 = _plan(run_cli, tmp_path, config, "--device", "raspberry-pi-5", "--context", "4096", "--kv-dtype", "int8")
    shape, pi = model_shape(read_config(config)), load_device("raspberry-pi-5")
    for plan, kv in ((fp32, "float32"), (int8, "int8")):
        assert plan["kv_dtype"] == kv
        for option in plan["options"]:
            longest = option["max_context"]  # the longest that fits: one token more does not
            if longest:
                assert total_bytes(shape, option["precision"], pi, longest, kv) <= plan["device"]["memory_bytes"]
            if option["max_context_limited_by"] == "memory":
                assert total_bytes(shape, option["precision"], pi, longest + 1, kv) > plan["device"]["memory_bytes"]
            else:
                assert longest == 4096  # Llama-2's max_position_embeddings
            assert option["fits"] == (longest >= 4096)
    for a, b in zip(fp32["options"], int8["options"]):
        assert a["kv_cache_bytes"] == 4 * b["kv_cache_bytes"] == 2 * 32 * 32 * 128 * 4096 * 4
        assert b["max_context"] >= a["max_context"]
    assert fp32["largest_fitting"] is None and int8["largest_fitting"] == "int8"


def test_the_plan_counts_what_the_model_is(run_cli, tmp_path):
    gemma = {
        "model_type": "gemma3_text",
        "architectures": ["Gemma3ForCausalLM"],
        "vocab_size": 262144,
        "hidden_size": 640,
        "intermediate_size": 2048,
        "num_hidden_layers": 18,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "max_position_embeddings": 32768,
        "sliding_window": 512,
        "layer_types": ["sliding_attention"] * 5
        + ["full_attention"]
        + ["sliding_attention"] * 5
        + ["full_attention"]
        + ["sliding_attention"] * 5
        + ["full_attention"],
    }
    (tmp_path / "gemma").mkdir()
    (tmp_path / "gemma" / "config.json").write_text(json.dumps(gemma))  # no tie_word_embeddings: tied
    plan = _plan(run_cli, tmp_path, tmp_path / "gemma", "--memory-mb", "2048", "--context", "8192")
    assert plan["model"]["tied_embeddings"] and "default" in plan["model"]["tied_embeddings_from"]
    assert abs(plan["model"]["parameters"] / 0.268e9 - 1) < 0.01  # Gemma 3 270M's count, not 0.436 B
    assert plan["model"]["sliding_window"] == {"window": 512, "layers": 15}
    for option in plan["options"]:
        windowed = option["windowed_runtime"]  # 3 of 18 layers keep 8192 tokens, 15 keep their 512
        assert windowed["kv_cache_bytes"] * 18 * 8192 == option["kv_cache_bytes"] * (3 * 8192 + 15 * 512)
        assert windowed["max_context"] >= option["max_context"]
    llama = json.loads((ROOT / "examples" / "configs" / "llama-2-7b" / "config.json").read_text())
    llama.pop("tie_word_embeddings", None)
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps(llama))  # LlamaConfig's default: untied
    assert (
        _plan(run_cli, tmp_path, tmp_path / "llama", "--device", "snapdragon-8-gen-3")["model"]["parameters"]
        == 6_738_415_616
    )
    ranked = _plan(
        run_cli, tmp_path, tmp_path / "gemma", tmp_path / "llama", "--device", "raspberry-pi-5", "--context", "1024"
    )["comparison"]
    assert [r["rank"] for r in ranked["models"]] == [1, 2] and ranked["models"][0]["model"] == str(tmp_path / "llama")


def test_the_plan_estimates_the_build_before_any_download(run_cli, tmp_path):
    import yaml

    config = ROOT / "examples" / "configs" / "llama-2-7b"
    plan = _plan(run_cli, tmp_path, config, "--device", "raspberry-pi-5", "--context", "1024")
    cost = plan["build_cost"]
    assert set(cost) >= {"peak_rss_bytes", "disk_bytes", "seconds", "basis"}
    assert cost["basis"]["extrapolated"] and cost["recipe"].startswith("edgeq init's starter recipe")
    assert cost["disk_bytes"] > 4 * plan["model"]["parameters"]  # at least the FP32 export
    recipe = yaml.safe_load((ROOT / "recipes" / "smollm2-int4.yaml").read_text())
    for section in (recipe["quantization"]["calibration"], recipe["validation"]):
        section["data"]["path"] = str(ROOT / "recipes" / section["data"]["path"])
    costs = []
    for samples in (8, 32):
        recipe["validation"].update(samples=samples)
        (tmp_path / f"r{samples}.yaml").write_text(yaml.safe_dump(recipe))
        costs.append(
            _plan(run_cli, tmp_path, config, "--device", "x86-avx2", "--recipe", tmp_path / f"r{samples}.yaml")[
                "build_cost"
            ]
        )
    assert costs[1]["seconds"] > costs[0]["seconds"] and costs[1]["peak_rss_bytes"] == costs[0]["peak_rss_bytes"]
    assert costs[0]["recipe"] == str(tmp_path / "r8.yaml")


@pytest.mark.fast
@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")))
def test_every_bundled_recipe_has_a_build_cost(recipe):
    """Every candidate ladder counts: island rungs and a QDQ NPU's activation types (a8w8, a16w8) alike."""
    from edgeq.build_cost import plan_build_cost

    cost = plan_build_cost(ROOT / "examples" / "configs" / "llama-2-7b", None, ROOT / "recipes" / recipe)
    assert cost["seconds"] > 0 and cost["peak_rss_bytes"] > 0


def test_the_build_cost_fit_holds_on_every_measured_build():
    """bench/data's measured builds (the bundled recipes and their variants, one machine): the committed constants
    estimate each one's seconds and peak RSS within 30%."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fit_build_costs.py"), "--check", "0.3"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" ok") == 12


def test_planted_projection_is_found_and_promoted(tmp_path, write_recipe):
    model = make_decoder(tmp_path / "planted", "llama", seed=1, planted=True)
    recipe = base_recipe(
        str(model),
        model={"task": "text-generation"},
        quantization={
            "mode": "int4",
            "op_types": ["MatMul"],
            "calibration": {"data": {"path": str(DATA / "calibration.txt")}, "samples": 16, "sequence_length": 48},
        },
        mixed_precision={
            "proxy_samples": 8,
            "candidates": ["int4", "int4a", "fp16"],
            "budget": {"min_cosine_mean": None, "ceilings": {"kl_divergence_mean": 1e-4}},
        },
        validation={"samples": 24, "sequence_length": 48, "thresholds": {"cosine_mean": None}},
    )
    report = api.build(write_recipe(recipe), output=tmp_path / "out").report
    mp = report["mixed_precision"]
    islands = {i["name"]: i for i in mp["islands"]}
    best = max(mp["islands"], key=lambda i: max(i["gain"].values(), default=0))
    assert best["name"] == PLANTED_DECODER_ISLAND, sorted(
        (max(i["gain"].values(), default=0), i["name"]) for i in mp["islands"]
    )[-4:]
    assert islands[PLANTED_DECODER_ISLAND]["precision"] in ("int4a", "fp16")
    assert "minus KL" in islands[PLANTED_DECODER_ISLAND]["reason"]
    final = next(v for v in report["validations"] if v["artifact"] == "mixed")
    uniform = next(v for v in report["validations"] if v["artifact"] == "int4")
    assert final["metrics"]["kl_divergence_mean"] < uniform["metrics"]["kl_divergence_mean"]
    for key in (
        "next_token_top1_agreement",
        "kl_divergence_mean",
        "perplexity",
        "perplexity_reference",
        "greedy_match_tokens",
    ):
        assert key in final["metrics"], key


def test_an_int8_kv_cache_is_validated_beside_the_same_model_with_an_fp32_cache(tmp_path, write_recipe):
    """Mechanics on random weights: the cache's tensors are INT8 on the real kernel, the search's model is validated
    with both caches and the report's cost is their difference (what it costs a real model: the README)."""
    model = make_decoder(tmp_path / "m", "llama", seed=2)
    recipe = base_recipe(
        str(model),
        model={"task": "text-generation"},
        quantization={
            "mode": "int4",
            "op_types": ["MatMul"],
            "kv_cache": "int8",
            "calibration": {"data": {"path": str(DATA / "calibration.txt")}, "samples": 8, "sequence_length": 48},
        },
        validation={"samples": 12, "sequence_length": 48, "thresholds": {"cosine_mean": None}},
    )
    result = api.build(write_recipe(recipe), output=tmp_path / "out")
    report = result.report
    assert report["final_artifact"] == "kv8"
    final = onnx.load(str(result.out_dir / "final" / "model.onnx"))
    past = [i for i in final.graph.input if i.name.startswith("past_key_values")]
    assert past and all(i.type.tensor_type.elem_type == onnx.TensorProto.INT8 for i in past)
    attention = [n for n in final.graph.node if n.op_type == "GroupQueryAttention"]
    assert all(n.input[12].endswith("key.kv_scale") and n.input[13].endswith("value.kv_scale") for n in attention)
    metrics = {v["artifact"]: v["metrics"] for v in report["validations"]}
    (cost,) = report["kv_cache"]["cost"]
    assert report["kv_cache"]["from_artifact"] == "int4" and report["kv_cache"]["layers"] == len(attention)
    assert cost["kl_divergence_mean"] == pytest.approx(
        metrics["kv8"]["kl_divergence_mean"] - metrics["int4"]["kl_divergence_mean"], abs=1e-6
    )
    assert metrics["kv8"]["max_abs_error"] != metrics["int4"]["max_abs_error"]  # the cache was quantized
    assert abs(cost["kl_divergence_mean"]) < 0.1 and "## KV cache" in (result.out_dir / "report.md").read_text()


def test_an_int8_kv_cache_on_an_encoder(run_cli, write_recipe, tiny_bert):
    recipe = base_recipe(
        str(tiny_bert), quantization={"kv_cache": "int8", "calibration": {"data": {"path": "data/calibration.txt"}}}
    )
    assert_error(
        run_cli("build", write_recipe(recipe)),
        "Error: quantization.kv_cache: int8 is for language models, "
        "and this is a feature-extraction model. Remove kv_cache",
    )


def test_encoder_given_text_generation(run_cli, write_recipe, tiny_bert):
    path = write_recipe(base_recipe(str(tiny_bert), model={"task": "text-generation"}))
    assert_error(
        run_cli("build", path),
        "Error: model.task is text-generation but the model is a BertModel, which has "
        "no text-generation head. Use a ...ForCausalLM model, or omit model.task to "
        "let edgeq detect it",
    )


def test_context_over_the_models_positions(run_cli, write_recipe, tmp_path):
    model = make_decoder(tmp_path / "short", "gpt2")
    path = write_recipe(base_recipe(str(model), model={"task": "text-generation"}, validation={"sequence_length": 300}))
    assert_error(
        run_cli("build", path),
        "Error: validation.sequence_length: 300 tokens is over the model's "
        "max_position_embeddings (256). Use at most 256",
    )


def test_plan_errors(run_cli, tmp_path, monkeypatch):
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    assert_error(
        run_cli("plan", tmp_path / "notes.json"),
        f"Error: '{tmp_path / 'notes.json'}' is not a language model config (no num_hidden_layers). Give the "
        "config.json of a decoder such as Llama, Mistral, Qwen2, Phi-3 or GPT-2",
    )
    devices = tmp_path / "devices"
    devices.mkdir()
    (devices / "bare.yaml").write_text(
        "id: bare\ndescription: d\ndevice_class: cpu\narch: x86_64\nexecution_provider: {name: CPUExecutionProvider}\n"
    )
    monkeypatch.setenv("EDGEQ_DEVICES_PATH", str(devices))
    config = tmp_path / "m"
    config.mkdir()
    (config / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "num_hidden_layers": 2,
                "hidden_size": 64,
                "num_attention_heads": 4,
                "vocab_size": 100,
            }
        )
    )
    assert_error(
        run_cli("plan", config, "--device", "bare"),
        "Error: device 'bare' has no memory facts (memory_mb). Pass --memory-mb N",
    )


def test_architecture_the_exporter_does_not_support(run_cli, write_recipe, tmp_path):
    import transformers

    folder = tmp_path / "xlnet"
    folder.mkdir()
    vocab = save_tokenizer("roberta", folder)
    config = transformers.XLNetConfig(vocab_size=vocab["vocab_size"], d_model=32, n_layer=1, n_head=2, d_inner=64)
    transformers.XLNetLMHeadModel(config).save_pretrained(str(folder))
    result = run_cli("build", write_recipe(base_recipe(str(folder), model={"task": None})), "-o", tmp_path / "out")
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert (
        line.startswith(
            "Error: the ONNX exporter (optimum) has no text-generation-with-past export for "
            "model_type 'xlnet'. Supported: "
        )
        and "llama" in line
        and "qwen2" in line
    )


def test_an_int4_build_keeps_library_logging_in_its_log_file(write_recipe, tmp_path):
    """onnxruntime's 4-bit quantizer logs a line per node at INFO: the terminal shows edgeq's stage lines only, and
    build.log holds everything (a fresh process, as a user runs it: the quantizer's logging is set up at import)."""
    import os
    import subprocess
    import sys

    model = make_decoder(tmp_path / "model", "llama")
    recipe = base_recipe(
        str(model),
        model={"task": "text-generation"},
        quantization={"mode": "int4", "block_size": 32, "op_types": ["MatMul", "Gather"]},
        validation={"samples": 4, "thresholds": {"cosine_mean": None}},
    )
    out = tmp_path / "build"
    env = {k: v for k, v in os.environ.items() if k != "EDGEQ_QUIET"}  # the terminal a user sees
    done = subprocess.run(
        [sys.executable, "-m", "edgeq.cli", "build", str(write_recipe(recipe)), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode in (0, 3), done.stderr
    assert "[INFO]" not in done.stderr and "matmul_nbits" not in done.stderr and "Warning" not in done.stderr
    assert "▶ quantize → int4/" in done.stderr and "validate:" in done.stderr
    log = (out / "build.log").read_text()
    assert "onnxruntime.quantization.matmul_nbits_quantizer [INFO]" in log and "▶ quantize → int4/" in log
    assert json.loads((out / "report.json").read_text())["log_file"] == "build.log"


def test_validate_bounds_a_language_model_s_greedy_continuations(run_cli, tmp_path):
    """`edgeq validate --follow-ups N`: greedy continuations on at most N samples, and the entry says how many."""
    from edgeq.recipe.schema import QuantizationConfig

    fp32 = api.export(str(make_decoder(tmp_path / "llama", "llama")), tmp_path / "fp32")
    quantized = api.quantize(fp32, tmp_path / "int4", QuantizationConfig(mode="int4"))
    command = ["validate", quantized, "--reference", fp32, "--data", DATA / "calibration.txt", "--samples", "4"]
    result = run_cli(*command, "--task", "text-generation", "--follow-ups", "1", "--json")
    assert result.exit_code in (0, 3), result.output
    assert json.loads(result.stdout)["metrics"]["greedy_prompts"] == 1
