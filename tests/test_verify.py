"""manifest.json, `edgeq verify` and `edgeq compare`'s Pareto page on tiny random BERT builds: a build verifies on an
unchanged machine; a tool version, one byte of the final model, a recorded metric or a threshold that moved makes
it exit 1 with one line naming what moved; `--rebuild` compares bytes stage by stage."""

from __future__ import annotations

import json
import re

import onnx
import pytest
from conftest import base_recipe
from onnx import numpy_helper

from edgeq import api
from edgeq.pareto import build_points, pareto_front, plotted_metrics, scale_for

MANIFEST_KEYS = {"edgeq", "tools", "recipe_file", "recipe_hash", "devices", "inputs", "environment", "artifacts"}


@pytest.fixture(scope="module")
def tiny_build(tiny_bert, tmp_path_factory):
    """A tiny build whose recipe lets cosine_mean move by 0.05 (and nothing else set)."""
    import shutil

    import yaml
    from conftest import DATA

    folder = tmp_path_factory.mktemp("verified")
    shutil.copytree(DATA, folder / "data")
    recipe = base_recipe(str(tiny_bert), verify={"tolerance": {"cosine_mean": 0.05}})
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    api.build(folder / "recipe.yaml", output=folder / "build")
    return folder / "build"


def _copy(build, tmp_path):
    import shutil

    shutil.copytree(build, tmp_path / "build")
    return tmp_path / "build"


def _edit_manifest(build, change) -> None:
    path = build / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


@pytest.mark.fast
def test_the_manifest_and_verify_on_an_unchanged_machine(tiny_build, run_cli):
    manifest = json.loads((tiny_build / "manifest.json").read_text())
    assert MANIFEST_KEYS <= set(manifest)
    assert manifest["tools"]["onnxruntime"] and re.fullmatch(r"[0-9a-f]{64}", manifest["edgeq"]["source_hash"])
    assert set(manifest["inputs"]["data"]) == {"data/validation.txt"}
    final = next(a for a in manifest["artifacts"] if a["name"] == "final")
    assert final["path"] == "final/model.onnx" and "model.onnx" in final["files"] and "config.json" in final["files"]
    ((device, metrics),) = final["metrics"].items()
    assert 0.9 < metrics["cosine_mean"] < 1 and final["modes"][device] == "on-host" and final["passed"][device]
    result = run_cli("verify", tiny_build, "--json")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["holds"] and [c for c in found["changes"] if c["moves"]] == []
    assert [(v["artifact"], v["device"]) for v in found["validations"]] == [("final", device)]


@pytest.mark.fast
def test_a_changed_tool_version_or_weight_byte_is_named_in_one_line(tiny_build, run_cli, tmp_path):
    build = _copy(tiny_build, tmp_path)
    _edit_manifest(build, lambda m: m["tools"].update(onnxruntime="0.0.1"))
    moved = run_cli("verify", build)
    assert moved.exit_code == 1
    (line,) = _error_lines(moved)
    assert "onnxruntime: 0.0.1 →" in line and "1 moved" in line
    assert run_cli("verify", build, "--allow-new-versions").exit_code == 0  # said, not counted
    model = build / "final" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    moved = run_cli("verify", build, "--allow-new-versions")
    (line,) = _error_lines(moved)
    assert moved.exit_code == 1 and "final/model.onnx:" in line and "onnxruntime" not in line


@pytest.mark.fast
def test_a_metric_moves_only_past_its_tolerance(tiny_build, run_cli, tmp_path):
    build = _copy(tiny_build, tmp_path)

    def shift(by):
        def change(manifest):
            final = next(a for a in manifest["artifacts"] if a["name"] == "final")
            for metrics in final["metrics"].values():
                metrics["cosine_mean"] -= by

        return change

    _edit_manifest(build, shift(0.01))  # within the recipe's 0.05: said
    within = json.loads(run_cli("verify", build, "--json").stdout)
    assert within["holds"] and any(c["kind"] == "metric" and not c["moves"] for c in within["changes"])
    _edit_manifest(build, shift(0.1))
    moved = run_cli("verify", build)
    (line,) = _error_lines(moved)
    assert moved.exit_code == 1 and "cosine_mean (tolerance 0.05)" in line


def test_a_threshold_that_no_longer_holds(tiny_build, run_cli, tmp_path):
    """The final model's float weights replaced by noise: its hash moves and its threshold fails, both said."""
    import numpy as np

    build = _copy(tiny_build, tmp_path)
    path = build / "final" / "model.onnx"
    model = onnx.load(str(path))
    noise = np.random.default_rng(0)
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32 and array.size > 16:
            tensor.CopyFrom(numpy_helper.from_array(noise.normal(size=array.shape).astype(np.float32), tensor.name))
    onnx.save(model, str(path))
    found = json.loads(run_cli("verify", build, "--json").stdout)
    kinds = {c["kind"] for c in found["changes"] if c["moves"]}
    assert not found["holds"] and {"hash", "threshold"} <= kinds


def test_rebuild_compares_the_bytes_stage_by_stage(tiny_build, run_cli, tmp_path):
    build = _copy(tiny_build, tmp_path)
    found = json.loads(run_cli("verify", build, "--rebuild", "--json").stdout)
    rebuild = found["rebuild"]
    assert set(rebuild["identical"]) | set(rebuild["differing"]) == {"fp32", "int8", "final"}
    # onnxruntime's dynamic quantizer and the export are deterministic here: the same bytes again
    assert rebuild["differing"] == [] and found["holds"], found["changes"]


def test_bad_input_is_one_line(run_cli, tmp_path):
    result = run_cli("verify", tmp_path)
    assert result.exit_code == 1 and _error_lines(result) == [result.stderr.strip()]
    assert "has no manifest.json" in result.stderr


@pytest.mark.fast
def test_the_pareto_front_and_the_compare_page(tiny_build, run_cli, tmp_path):
    report = json.loads((tiny_build / "report.json").read_text())
    points = build_points(report, str(tiny_build), "tiny")
    assert {p["artifact"] for p in points} == {"fp32", "int8"} and all(p["size_mb"] for p in points)
    assert [p["artifact"] for p in pareto_front(points, "size_mb", "cosine_mean")] == ["int8", "fp32"]
    made = [
        {"target": "t", "artifact": a, "size_mb": s, "metrics": {"kl_divergence_mean": kl, "cosine_mean": c}}
        for a, s, kl, c in (("a", 1, 0.5, 0.9), ("b", 2, 0.2, 0.8), ("c", 3, 0.3, 0.95), ("d", 4, 0.1, 0.99))
    ]
    assert [p["artifact"] for p in pareto_front(made, "size_mb", "kl_divergence_mean")] == ["a", "b", "d"]
    assert [p["artifact"] for p in pareto_front(made, "size_mb", "cosine_mean")] == ["a", "c", "d"]
    page = tmp_path / "compare.html"
    result = run_cli("compare", tiny_build, tiny_build, tiny_build, "--output", page)
    assert result.exit_code == 0 and "plots:" in result.stdout
    html = page.read_text()
    drawn = plotted_metrics(points)
    assert drawn[:2] == ["cosine_mean", "cosine_min"]
    assert html.count("<svg class=plot") == 2 * len(drawn)  # each metric against size and against p50
    assert html.count("<g class=point") == 2 * len(drawn) * 6 and "class=front" in html and "<script" not in html


@pytest.mark.fast
def test_the_axes_spread_what_matters():
    """A fidelity near 1 on "nines" (0.99 and 0.999 as far apart as 0.9 and 0.99), a latency spanning an emulator's
    seconds and a CPU's milliseconds on a log scale, anything else linear."""
    nines = scale_for([0.9, 0.99, 0.999, 1.0], "cosine_mean")
    gaps = [nines.to(b) - nines.to(a) for a, b in ((0.9, 0.99), (0.99, 0.999))]
    assert gaps[0] == pytest.approx(gaps[1]) and nines.to(1.0) <= 1 and nines.to(0.9) >= 0
    assert [text for _, text in nines.ticks] == ["0.9", "0.99", "0.999", "0.9999", "0.99999"]
    times = scale_for([2.0, 20.0, 2000.0], None)
    assert times.to(20.0) - times.to(2.0) == pytest.approx(times.to(2000.0) - times.to(200.0))
    kl = scale_for([0.01, 0.5, 0.02], "kl_divergence_mean")  # lower is better: linear, as measured
    assert kl.to(0.5) - kl.to(0.01) == pytest.approx((0.5 - 0.01) / (0.5 - 0.02) * (kl.to(0.5) - kl.to(0.02)))
