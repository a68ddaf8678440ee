"""The real-model tier for language models: edgeq's own small trained Llama (src/edgeq/demo_lm.py; trained once,
cached under ~/.cache/edgeq) through the LLM recipe, on this host only (the recipe's arm64 stand-in is left to
`edgeq build recipes/tiny-llama-int4.yaml`, to keep the suite's time)."""

from __future__ import annotations

import pytest
from conftest import build_bundled_recipe

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(2400)]  # the first run trains the model (~7 min)
LM_METRICS = {
    "next_token_top1_agreement",
    "kl_divergence_mean",
    "perplexity",
    "perplexity_reference",
    "greedy_match_tokens",
}


@pytest.fixture(scope="module")
def lm_build(tmp_path_factory):
    def lighter(recipe: dict) -> None:
        recipe["targets"] = ["x86-avx2"]
        recipe["validation"]["samples"] = 24
        recipe["profile"]["runs"] = 2

    return build_bundled_recipe("tiny-llama-int4", tmp_path_factory.mktemp("tiny-llama"), lighter)


def test_llm_recipe_reports_the_language_model_metrics(lm_build):
    result, report = lm_build
    assert result.exit_code == 0 and report["final_artifact"] == "mixed"
    validated = {v["artifact"]: v for v in report["validations"]}
    assert set(validated) == {"fp32", "int4", "mixed"} and all(v["passed"] for v in validated.values())
    for validation in validated.values():
        assert LM_METRICS <= set(validation["metrics"]), validation["metrics"]
    assert validated["fp32"]["metrics"]["kl_divergence_mean"] < 1e-6
    profile = next(p for p in report["profiles"] if p["device"] == "x86-avx2")
    assert profile["decode_tokens_per_s"] > 0 and profile["ttft_ms"]["p50"] > 0 and profile["generated_tokens"] == 32
    assert profile["planned_bytes"] > 0 and profile["measured_over_planned"] > 0  # the planner beside the measurement
    uniform = next(p for p in report["profiles"] if p["device"] == "x86-avx2" and p["model"] == "int4/model.onnx")
    assert uniform["planned_is_same_precision"] and not profile["planned_is_same_precision"]  # the like-for-like row


def test_mixed_precision_beats_uniform_int4_within_its_byte_budget(lm_build):
    _, report = lm_build
    validated = {v["artifact"]: v["metrics"] for v in report["validations"]}
    sizes = {a["name"]: a["size_bytes"] for a in report["artifacts"]}
    search = report["mixed_precision"]
    lowest, chosen = search["configurations"][0], search["configurations"][search["chosen_configuration"]]
    assert lowest["size_exact"] and chosen["size_exact"] and chosen["size_bytes"] == sizes["mixed"]
    assert sizes["mixed"] <= 1.15 * lowest["size_bytes"]  # the budget: 15% over 4-bit everywhere, in file bytes
    assert validated["mixed"]["kl_divergence_mean"] < validated["int4"]["kl_divergence_mean"]
    assert validated["mixed"]["next_token_top1_agreement"] >= validated["int4"]["next_token_top1_agreement"]
    islands = report["mixed_precision"]["islands"]
    assert all(island["reason"] for island in islands) and {"int4", "int4g"} & {i["precision"] for i in islands}
