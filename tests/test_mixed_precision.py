"""Mixed precision on tiny models: the planted sensitive layer is kept, the budget holds, reasons are given,
and the overrides file reproduces the model with no search."""

from __future__ import annotations

import math

import onnx
import pytest
from conftest import PLANTED_ISLAND, base_recipe, make_tiny_bert

from edgeq import api
from edgeq.artifact import node_precisions
from edgeq.errors import ConstraintError
from edgeq.mixed_precision.islands import build_candidates, find_islands
from edgeq.mixed_precision.overrides import resolve


@pytest.fixture(scope="module")
def planted_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("planted"), seed=3, outlier=60.0)


def mixed_recipe(model_dir, **mixed) -> dict:
    return base_recipe(
        str(model_dir),
        quantization={"calibration": {"data": {"path": "data/calibration.txt"}, "samples": 16}},
        mixed_precision={"proxy_samples": 16, "candidates": ["int8", "int8s", "w8", "fp32"], **mixed},
        validation={"samples": 48, "thresholds": {"cosine_mean": 0.9}},
    )


@pytest.mark.fast
def test_planted_sensitive_layer_is_the_one_kept_in_higher_precision(planted_bert, write_recipe, tmp_path):
    recipe = mixed_recipe(planted_bert, budget={"min_cosine_mean": 0.99995, "max_slowdown": 3.0})
    report = api.build(write_recipe(recipe), output=tmp_path / "out").report
    mp = report["mixed_precision"]
    islands = {i["name"]: i for i in mp["islands"]}
    assert islands[PLANTED_ISLAND]["precision"] in ("int8s", "w8", "fp32")
    best = max(mp["islands"], key=lambda i: max(i["gain"].values()))
    assert best["name"] == PLANTED_ISLAND
    assert mp["evaluations"][0]["configuration"] == 0 and not mp["evaluations"][0]["passed"]
    promoted = [i["name"] for i in mp["islands"] if i["precision"] != "int8" and i["kind"] != "gather"]
    assert len(promoted) <= 3, promoted
    assert all(i["reason"] for i in mp["islands"])
    assert islands[PLANTED_ISLAND]["reason"].startswith("kept ") and "rank 1 of" in islands[PLANTED_ISLAND]["reason"]
    assert mp["budget_met"] is True
    # only the chosen configuration is timed, against what the ceilings name: no other's time decides anything
    timed = [e["configuration"] for e in mp["evaluations"] if "slowdown" in e["metrics"]]
    assert timed == [mp["chosen_configuration"]]
    assert not any("latency_ratio" in e["metrics"] for e in mp["evaluations"])  # no max_latency_ratio set
    k = len(mp["configurations"])
    assert mp["full_evaluations"] <= math.ceil(math.log2(k)) + 2
    assert mp["proxy_passes"] >= len(islands)
    final = report["validations"][-1]
    assert final["artifact"] == "mixed" and final["metrics"]["cosine_mean"] >= 0.99995
    assert "## Mixed precision" in (tmp_path / "out" / "report.md").read_text()


def test_size_ceiling_is_respected_when_fidelity_is_out_of_reach(planted_bert, write_recipe, tmp_path):
    recipe = mixed_recipe(
        planted_bert, candidates=["int8", "fp32"], budget={"min_cosine_mean": 0.99999999, "max_size_ratio": 0.4}
    )
    out = tmp_path / "out"
    report = api.build(write_recipe(recipe), output=out).report
    mp = report["mixed_precision"]
    fp32 = report["artifacts"][0]["size_bytes"]
    mixed = next(a for a in report["artifacts"] if a["name"] == "mixed")
    assert mixed["size_bytes"] <= 0.4 * fp32  # the search counts the bytes the file holds
    assert mp["size_ratio"] <= 0.4
    assert mp["budget_met"] is False and "no configuration meets the fidelity budget" in mp["notes"][0]
    assert set(mp["precision_counts"]) == {"int8", "fp32"}


def test_pinned_overrides_reproduce_the_model_with_no_search(planted_bert, write_recipe, tmp_path):
    first = tmp_path / "first"
    api.build(write_recipe(mixed_recipe(planted_bert, budget={"min_cosine_mean": 0.99995})), output=first)
    overrides = first / "mixed" / "overrides.yaml"
    assert overrides.read_text().startswith("# edgeq mixed-precision overrides")
    pinned_recipe = mixed_recipe(planted_bert, overrides=str(overrides))
    second = tmp_path / "second"
    report = api.build(write_recipe(pinned_recipe, "pinned.yaml"), output=second).report
    mp = report["mixed_precision"]
    assert mp["proxy_passes"] == 0 and mp["full_evaluations"] == 0 and mp["pinned_overrides"] == str(overrides)
    a = onnx.load(str(first / "mixed" / "model.onnx"))
    b = onnx.load(str(second / "mixed" / "model.onnx"))
    assert node_precisions(a) == node_precisions(b)
    assert (first / "mixed" / "model.onnx").read_bytes() == (second / "mixed" / "model.onnx").read_bytes()


def test_overrides_resolution_order_and_errors(tiny_onnx, tmp_path):
    model = onnx.load(str(tiny_onnx))
    islands = find_islands(model)
    ladder = ["int8", "w8", "fp32"]
    build_candidates(model, islands, ladder)
    query = next(i for i in islands if i.name.endswith("layer.0.attention.self.query"))
    overrides = {
        "_default": "int8",
        "re:.*intermediate.*": "w8",
        query.node_name: "fp32",
        "encoder.layer.1.intermediate.dense": "fp32",
    }
    chosen = resolve(overrides, islands, ladder, tmp_path / "o.yaml")
    assert chosen[query.name] == "fp32"
    assert chosen["encoder.layer.0.intermediate.dense"] == "w8"
    assert chosen["encoder.layer.1.intermediate.dense"] == "fp32"  # an exact name beats a pattern
    assert chosen["encoder.layer.0.output.dense"] == "int8"
    with pytest.raises(ConstraintError, match=r"no island named 'encoder.layer.0.atention.self.query'. Did you mean"):
        resolve({"encoder.layer.0.atention.self.query": "w8"}, islands, ladder, tmp_path / "o.yaml")


def test_static_mixed_precision_takes_only_dpu_candidates(run_cli, write_recipe, tiny_bert):
    recipe = mixed_recipe(tiny_bert)
    recipe["quantization"]["mode"] = "static"
    path = write_recipe(recipe)
    result = run_cli("build", path)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: recipe '{path}': mixed_precision with quantization.mode: static takes "
        "candidates [xint8, w8, fp32] (power-of-two INT8 for DPUs; w8 and fp32 stay on the "
        "CPU) or [a8w8, a16w8] (QDQ NPUs) in this edgeq version"
    )


def test_fused_attention_islands_quantize_through_qattention(planted_bert, write_recipe, tmp_path):
    recipe = mixed_recipe(planted_bert, budget={"min_cosine_mean": 0.99995})
    recipe["optimize"] = {"enabled": True}
    recipe["quantization"]["op_types"] = ["MatMul", "Attention", "Gather"]
    out = tmp_path / "out"
    report = api.build(write_recipe(recipe), output=out).report
    kinds = {i["kind"] for i in report["mixed_precision"]["islands"]}
    assert kinds == {"attention", "matmul", "gather"}
    attention = [i for i in report["mixed_precision"]["islands"] if i["kind"] == "attention"]
    assert len(attention) == 2 and all(set(i["gain"]) == {"int8s", "fp32"} for i in attention)  # no w8 for Attention
    ops = {n.op_type for n in onnx.load(str(out / "mixed" / "model.onnx")).graph.node}
    quantized = [n for n in onnx.load(str(out / "mixed" / "model.onnx")).graph.node if n.op_type == "QAttention"]
    assert len(quantized) == sum(i["precision"] != "fp32" for i in attention) >= 1, ops
    assert report["validations"][-1]["metrics"]["cosine_mean"] >= 0.99995
    # the fused norms in onnxruntime's fast CPU forms, in the model and in the report (edgeq.optimize.cpu_forms)
    assert {"SkipLayerNormalization", "BiasGelu"}.isdisjoint(ops) and {"Sum", "LayerNormalization"} <= ops
    assert report["mixed_precision"]["cpu_forms"]["skip_layer_norms_split"] == 4  # two layers, two norms each
    assert "SkipLayerNormalization as Sum + LayerNormalization" in (out / "report.md").read_text()


def test_promotions_with_no_run_time_scale_are_run_at_the_first_shape_only(planted_bert, write_recipe, tmp_path):
    recipe = mixed_recipe(planted_bert, candidates=["sint8", "fp32"], budget={"min_cosine_mean": 0.99995})
    recipe["validation"]["shapes"] = [{"batch_size": 1}, {"batch_size": 4}]
    report = api.build(write_recipe(recipe), output=tmp_path / "out").report
    mp = report["mixed_precision"]
    first, batched = mp["shapes"]
    assert any(f"were run at {first} only" in note for note in mp["notes"]), mp["notes"]
    promoted = [i for i in mp["islands"] if i["kind"] != "gather"]
    assert all(i["gain_by_shape"]["fp32"][first] == i["gain_by_shape"]["fp32"][batched] for i in promoted)
    # what licenses it: a static-scale model's texts come out of a padded batch as they do alone
    final = next(v for v in report["validations"] if v["artifact"] == "mixed")
    at = {s["shape"]: s["metrics"] for s in final["shapes"]}
    assert at[first]["cosine_mean"] == pytest.approx(at[batched]["cosine_mean"], abs=1e-6)
    assert at[first]["cosine_min"] == pytest.approx(at[batched]["cosine_min"], abs=1e-6)
    # FP32's and the all-static model's passes at the batched shape stop once their first batch matches bit for bit
    assert any(f"stopped after their first batch, which gave the {first} outputs" in n for n in mp["notes"])
    # a budget with no latency ceiling times nothing (the validation stage measures the ratio to FP32)
    assert not any("slowdown" in e["metrics"] or "latency_ratio" in e["metrics"] for e in mp["evaluations"])


@pytest.mark.fast
def test_concurrent_and_reused_passes_give_the_serial_outputs(planted_bert, write_recipe, tmp_path):
    """The runner's shortcuts change no output: batches of one text run two at a time on one session give what one
    at a time gives; a batched shape is taken from the first only when its first batch matches bit for bit, and a
    dynamic-INT8 model (its scale taken from the padded batch) is run through."""
    from edgeq.mixed_precision.evaluate import Runner, identical
    from edgeq.pipeline import plan_build

    recipe = mixed_recipe(planted_bert, candidates=["int8", "fp32"])
    recipe["validation"]["shapes"] = [{"batch_size": 1}, {"batch_size": 4}]
    out, path = tmp_path / "out", write_recipe(recipe)
    api.build(path, output=out)
    plan = plan_build(path, output=out)
    inputs = plan.task.inputs(out / "fp32", 32, False)
    shapes = [(1, 32), (4, 32)]

    def runner(workers: int) -> Runner:
        made = Runner(plan.task, plan.validation_samples[:24], inputs, plan.targets[0], shapes)
        made.workers = workers
        return made

    fp32, dynamic = (onnx.load(str(out / name / "model.onnx")) for name in ("fp32", "int8"))
    serial, concurrent = runner(1), runner(2)
    reference = serial.outputs(fp32)
    assert identical(reference, concurrent.outputs(fp32))
    assert serial.reused_batched == concurrent.reused_batched == 1  # FP32 at b4: its first batch matched
    assert identical(serial.outputs(dynamic, reference), concurrent.outputs(dynamic, reference))
    assert serial.reused_batched == 1  # the dynamic model's b4 pass ran every batch
