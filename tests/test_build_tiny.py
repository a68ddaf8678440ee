"""End-to-end builds on tiny random BERT models: contract, cache, quantization variants, atomic writes."""

from __future__ import annotations

import json
import platform

import onnx
import pytest
from conftest import DATA, base_recipe, host_device, make_tiny_bert

from edgeq import api
from edgeq.artifact import precision_summary
from edgeq.report_contract import Report

CONTRACT_KEYS = {"edgeq_version", "recipe", "stages", "artifacts", "validations", "final"}
VALIDATION_KEYS = {
    "artifact",
    "device",
    "provider",
    "mode",
    "placement",
    "fallback_nodes",
    "environment",
    "metrics",
    "latency_ms",
    "thresholds",
    "passed",
}


def stages_by_name(report: dict) -> dict:
    return {s["name"]: s for s in report["stages"]}


@pytest.mark.fast
def test_dynamic_build_follows_the_contract(tiny_bert, write_recipe, tmp_path):
    out = tmp_path / "out"
    result = api.build(write_recipe(base_recipe(str(tiny_bert))), output=out)
    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    assert CONTRACT_KEYS <= set(report)
    Report.model_validate(report)  # the typed contract, docs/report.md
    assert [a["name"] for a in report["artifacts"]] == ["fp32", "int8"]
    assert report["artifacts"][1]["precision"].get("int8", 0) > 0
    assert report["artifacts"][1]["size_bytes"] < report["artifacts"][0]["size_bytes"]
    assert [s["name"] for s in report["stages"]] == ["export", "quantize", "validate"]
    assert stages_by_name(report)["export"]["export_check"]["cosine_min"] > 0.9999
    for v in report["validations"]:
        assert VALIDATION_KEYS <= set(v)
        assert v["mode"] == "on-host" and v["provider"] == "CPUExecutionProvider"
        assert v["placement"] == {"CPUExecutionProvider": sum(v["placement"].values())} and v["fallback_nodes"] == 0
        assert v["environment"]["machine"] == platform.machine() and v["environment"]["onnxruntime"]
        assert v["latency_ms"]["p50"] <= v["latency_ms"]["p90"]
        assert v["samples"] == 24
    int8 = report["validations"][1]
    assert int8["artifact"] == "int8" and int8["thresholds"] == {"cosine_mean": 0.9}
    assert 0.9 < int8["metrics"]["cosine_mean"] < 1.0 and int8["passed"] is True
    assert report["final"] == "final/model.onnx" and (out / "final" / "model.onnx").is_file()
    assert (out / "report.md").read_text().startswith("# edgeq report: tiny")
    assert (out / "recipe.resolved.yaml").is_file()
    assert result.exit_code == 0


def test_final_folder_loads_with_optimum_and_transformers(tiny_bert, write_recipe, tmp_path):
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer

    out = tmp_path / "out"
    api.build(write_recipe(base_recipe(str(tiny_bert))), output=out)
    model = ORTModelForFeatureExtraction.from_pretrained(out / "final")
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    hidden = model(**tokenizer(["the train was late"], return_tensors="pt")).last_hidden_state
    assert hidden.shape[-1] == 64


@pytest.mark.fast
def test_second_build_is_served_from_the_cache(tiny_bert, write_recipe, tmp_path, run_cli):
    recipe, out = write_recipe(base_recipe(str(tiny_bert))), tmp_path / "out"
    first = api.build(recipe, output=out).report
    second = json.loads(run_cli("build", recipe, "--output", out, "--json").stdout)
    assert [s["cached"] for s in first["stages"]] == [False, False, False]
    assert [s["cached"] for s in second["stages"]] == [True, True, False]  # validation is always measured
    assert [a["sha256"] for a in first["artifacts"]] == [a["sha256"] for a in second["artifacts"]]
    forced = api.build(recipe, output=out, force=True).report
    assert [s["cached"] for s in forced["stages"]] == [False, False, False]


def test_the_host_target_and_a_cross_build(tiny_bert, write_recipe, tmp_path, run_cli):
    from edgeq.targets.profiles import host_cpu_device

    recipe = write_recipe(base_recipe(str(tiny_bert), targets=["host"]))
    built = run_cli("build", recipe, "--output", tmp_path / "here")
    report = json.loads((tmp_path / "here" / "report.json").read_text())
    assert {(v["device"], v["mode"]) for v in report["validations"]} == {(host_cpu_device(), "on-host")}
    assert built.exit_code == 0 and f"target host: {host_cpu_device()}" in (tmp_path / "here" / "build.log").read_text()
    other = "x86-avx2" if host_cpu_device() != "x86-avx2" else "x86-avx512-vnni"
    cross = json.loads(run_cli("build", recipe, "--device", other, "--output", tmp_path / "cross", "--json").stdout)
    assert cross["recipe"]["targets"] == [other] and {v["device"] for v in cross["validations"]} == {other}


def test_changing_the_model_bytes_invalidates_the_cache(write_recipe, tmp_path):
    model_dir = make_tiny_bert(tmp_path / "model", seed=0)
    recipe, out = write_recipe(base_recipe(str(model_dir))), tmp_path / "out"
    first = api.build(recipe, output=out).report
    make_tiny_bert(model_dir, seed=7)  # same architecture and file names, different weights
    second = api.build(recipe, output=out).report
    assert [s["cached"] for s in second["stages"]] == [False, False, False]
    assert first["artifacts"][0]["sha256"] != second["artifacts"][0]["sha256"]


def test_changing_the_recipe_reruns_only_the_stages_it_touches(tiny_bert, write_recipe, tmp_path):
    out = tmp_path / "out"
    api.build(write_recipe(base_recipe(str(tiny_bert))), output=out)
    changed = base_recipe(str(tiny_bert), quantization={"per_channel": False})
    report = api.build(write_recipe(changed), output=out).report
    assert {s["name"]: s["cached"] for s in report["stages"]} == {"export": True, "quantize": False, "validate": False}


@pytest.mark.parametrize(
    "quantization, artifact, precision",
    [
        ({"format": "qdq", "method": "minmax", "batch_size": 4}, "int8", "int8"),
        ({"format": "qoperator", "method": "percentile", "batch_size": 1}, "int8", "int8"),
        ({"format": "qdq", "activation_type": "uint16", "method": "entropy", "batch_size": 2}, "w8a16", "mixed-8/16"),
    ],
)
def test_static_quantization_variants(tiny_bert, write_recipe, tmp_path, quantization, artifact, precision):
    calibration = {
        "data": {"path": "data/calibration.txt"},
        "samples": 16,
        "sequence_length": 32,
        "method": quantization.pop("method"),
        "batch_size": quantization.pop("batch_size"),
    }
    recipe = base_recipe(
        str(tiny_bert),
        quantization={"mode": "static", "op_types": ["MatMul"], **quantization, "calibration": calibration},
    )
    out = tmp_path / "out"
    report = api.build(write_recipe(recipe), output=out).report
    assert report["final_artifact"] == artifact
    summary = precision_summary(onnx.load(str(out / artifact / "model.onnx")))
    assert summary.get(precision, 0) > 0, summary
    assert stages_by_name(report)["quantize"]["calibration_samples"] == 16
    assert report["validations"][-1]["metrics"]["cosine_mean"] > 0.9


def test_jsonl_and_csv_data_sources(tiny_bert, write_recipe, tmp_path):
    texts = (tmp_path / "data" / "validation.txt").read_text().splitlines()[:12]
    (tmp_path / "data" / "val.jsonl").write_text("\n".join(json.dumps({"sentence": t}) for t in texts) + "\n")
    with (tmp_path / "data" / "calib.csv").open("w") as handle:
        handle.write("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts)))
    recipe = base_recipe(
        str(tiny_bert),
        quantization={"mode": "static", "calibration": {"data": {"path": "data/calib.csv", "field": "text"}}},
        validation={"data": {"path": "data/val.jsonl", "field": "sentence"}, "samples": None},
    )
    report = api.build(write_recipe(recipe), output=tmp_path / "out").report
    assert report["validations"][-1]["samples"] == 12
    assert stages_by_name(report)["quantize"]["calibration_samples"] == 12


def test_static_shapes_are_fixed_in_every_artifact(tiny_bert, write_recipe, tmp_path):
    recipe = base_recipe(
        str(tiny_bert),
        export={"batch_size": 1, "sequence_length": 32},
        quantization={"mode": "static", "calibration": {"data": {"path": "data/calibration.txt"}, "samples": 8}},
    )
    out = tmp_path / "out"
    api.build(write_recipe(recipe), output=out)
    for artifact in ("fp32", "int8", "final"):
        info = api.inspect(out / artifact / "model.onnx")
        assert all(i["shape"] == [1, 32] for i in info["inputs"]), info["inputs"]


def test_classification_reports_top1_agreement(tiny_classifier, write_recipe, tmp_path):
    recipe = base_recipe(
        str(tiny_classifier),
        model={"task": "text-classification"},
        validation={"thresholds": {"cosine_mean": 0.9, "top1_agreement": 0.8}},
    )
    report = api.build(write_recipe(recipe), output=tmp_path / "out").report
    int8 = report["validations"][-1]
    assert int8["metrics"]["top1_agreement"] >= 0.8 and int8["passed"]


def test_build_below_thresholds_exits_3_and_says_why(tiny_bert, write_recipe, tmp_path, run_cli):
    recipe = base_recipe(str(tiny_bert), validation={"thresholds": {"cosine_mean": 0.99999999}})
    out = tmp_path / "out"
    result = run_cli("build", write_recipe(recipe), "--output", out)
    assert result.exit_code == 3
    assert result.stderr.strip().startswith(f"Below thresholds: built, but int8 on {host_device()}: cosine_mean 0.9")
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False and (out / "final" / "model.onnx").is_file()


def test_a_failed_stage_leaves_no_half_written_artifact(tiny_bert, write_recipe, tmp_path, monkeypatch):
    import edgeq.quantize

    def crash(fp32_path, out_path, *args, **kwargs):
        out_path.write_bytes(b"half a model")
        raise RuntimeError("disk full")

    monkeypatch.setattr(edgeq.quantize, "quantize_model", crash)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        api.build(write_recipe(base_recipe(str(tiny_bert))), output=out)
    # the finished stage and the build's log (which says what failed); no int8/, no scratch
    assert sorted(p.name for p in out.iterdir()) == ["build.log", "fp32"]
    log = (out / "build.log").read_text()
    assert "▶ quantize" in log and "the build stopped: RuntimeError: disk full" in log
    monkeypatch.undo()
    report = api.build(write_recipe(base_recipe(str(tiny_bert))), output=out).report
    assert [s["cached"] for s in report["stages"]] == [True, False, False]


def test_quantize_and_validate_commands_on_any_onnx_file(tiny_onnx, run_cli, tmp_path):
    out = tmp_path / "q"
    result = run_cli(
        "quantize",
        tiny_onnx,
        "-o",
        out,
        "--mode",
        "static",
        "--calibration",
        DATA / "calibration.txt",
        "--samples",
        "8",
        "--sequence-length",
        "32",
    )
    assert result.exit_code == 0, result.output
    assert (out / "model.onnx").is_file() and (out / "tokenizer.json").is_file()
    result = run_cli(
        "validate",
        out / "model.onnx",
        "--reference",
        tiny_onnx,
        "--data",
        DATA / "validation.txt",
        "--samples",
        "10",
        "--json",
    )
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)
    assert entry["artifact"] == "candidate" and entry["samples"] == 10 and entry["mode"] == "on-host"
    strict = run_cli(
        "validate",
        out / "model.onnx",
        "--reference",
        tiny_onnx,
        "--data",
        DATA / "validation.txt",
        "--samples",
        "10",
        "--min-cosine-mean",
        "1.0",
    )
    assert strict.exit_code == 3 and strict.stderr.startswith("Below thresholds: cosine_mean")


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_quantize_leaves_nothing_in_the_current_folder(tiny_onnx, run_cli, tmp_path, monkeypatch, mode):
    monkeypatch.chdir(tmp_path)
    extra = ["--calibration", DATA / "calibration.txt", "--samples", "4"] if mode == "static" else []
    result = run_cli("quantize", tiny_onnx, "-o", "q", "--mode", mode, *extra)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]
