"""The read-only commands: inspect, profile, devices, recipes."""

from __future__ import annotations

import json

from conftest import ROOT

PROFILE_KEYS = {
    "transport",
    "latency_ms",
    "runs",
    "throughput_per_s",
    "load_ms",
    "first_run_ms",
    "peak_rss_mb",
    "ops",
    "placement",
    "environment",
}


def test_inspect_shows_signature_ops_and_precision(run_cli, tiny_onnx):
    info = json.loads(run_cli("inspect", tiny_onnx, "--json").stdout)
    assert [i["name"] for i in info["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert info["inputs"][0]["shape"] == ["batch_size", "sequence_length"]
    assert info["op_types"]["MatMul"] > 0 and info["precision"] == {"fp32": info["nodes"]}
    text = run_cli("inspect", tiny_onnx).stdout
    assert "input_ids" in text and "precision: fp32" in text


def test_profile_json_carries_the_contract(run_cli, tiny_onnx, tmp_path):
    out = tmp_path / "profile.json"
    result = run_cli(
        "profile", tiny_onnx, "--runs", "20", "--min-seconds", "0.1", "--sequence-length", "16", "--json", out
    )
    assert result.exit_code == 0, result.output
    profile = json.loads(out.read_text())
    assert PROFILE_KEYS <= set(profile)
    lat = profile["latency_ms"]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert (
        profile["runs"] >= 20 == profile["requested_runs"]
        and profile["transport"] == "local"
        and profile["mode"] == "on-host"
    )
    assert abs(sum(op["share"] for op in profile["ops"]) - 1) < 0.01
    assert {op["op_type"] for op in profile["ops"]} >= {"MatMul"}
    assert list(profile["placement"]) == ["CPUExecutionProvider"] and profile["fallback_nodes"] == 0
    assert {"machine", "onnxruntime", "cpu", "threads"} <= set(profile["environment"])
    assert "latency ms" in result.stdout


def test_devices_list_and_show(run_cli):
    assert "x86-avx512-vnni" in run_cli("devices", "list").stdout
    shown = json.loads(run_cli("devices", "show", "x86-avx512-vnni", "--json").stdout)
    assert shown["execution_provider"]["name"] == "CPUExecutionProvider"
    result = run_cli("devices", "show", "nope")
    assert result.exit_code == 1 and result.stderr.startswith("Error: unknown device 'nope'. Known devices:")


def test_recipes_list_reports_invalid_ones_without_failing(run_cli, tmp_path):
    listed = json.loads(run_cli("recipes", "list", ROOT / "recipes", "--json").stdout)
    assert "minilm-int8-cpu" in [r["name"] for r in listed]
    (tmp_path / "broken.yaml").write_text("name: broken\nbogus: 1\n")
    listed = json.loads(run_cli("recipes", "list", tmp_path, "--json").stdout)
    assert listed[0]["description"].startswith("invalid: recipe")
