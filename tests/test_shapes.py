"""Deployment shapes: every shape is validated on its own, metrics are the worst case, and the mixed-precision
search catches a layer that only padding breaks (planted in a tiny BERT). Random weights: mechanics, not quality."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA, PADDING_ISLAND, base_recipe, make_tiny_bert

from edgeq import api
from edgeq.mixed_precision.candidates import pair_safe_int8, quantize_symmetric
from edgeq.recipe.schema import DataSource

B1, B4 = {"batch_size": 1}, {"batch_size": 4}


@pytest.fixture(scope="module")
def padding_trap(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("padding-trap"), seed=4, padding_outlier=True)


def trap_recipe(model_dir, shapes, candidates) -> dict:
    return base_recipe(
        str(model_dir),
        quantization={"calibration": {"data": {"path": "data/calibration.txt"}, "samples": 16}},
        mixed_precision={"proxy_samples": 16, "candidates": candidates, "budget": {"min_cosine_mean": 0.999}},
        validation={"samples": 48, "shapes": shapes, "thresholds": {"cosine_mean": 0.9}},
    )


def test_a_batch_one_search_misses_what_padding_breaks(padding_trap, write_recipe, tmp_path):
    out = tmp_path / "b1"
    report = api.build(write_recipe(trap_recipe(padding_trap, [B1], ["int8", "fp32"])), output=out).report
    mp = report["mixed_precision"]
    assert mp["precision_counts"]["fp32"] == 0 and mp["evaluations"][0]["passed"]  # batch 1 sees no problem
    at_b4 = api.validate(
        out / "final" / "model.onnx",
        out / "fp32" / "model.onnx",
        DataSource(path=DATA / "validation.txt"),
        samples=48,
        batch_size=4,
    )
    assert at_b4["metrics"]["cosine_mean"] < 0.999  # ...but padded batches of 4 break it


@pytest.mark.fast
def test_the_shape_aware_search_catches_it_and_says_which_shape(padding_trap, write_recipe, tmp_path):
    out = tmp_path / "b1b4"
    report = api.build(write_recipe(trap_recipe(padding_trap, [B1, B4], ["int8", "fp32"])), output=out).report
    mp = report["mixed_precision"]
    first = mp["evaluations"][0]
    assert not first["passed"] and first["failures"][0].endswith("at b4-s128")
    assert set(first["metrics"]["shapes"]) == {"b1-s128", "b4-s128"}
    islands = {i["name"]: i for i in mp["islands"]}
    assert islands[PADDING_ISLAND]["precision"] == "fp32"
    assert "b4-s128" in islands[PADDING_ISLAND]["reason"]
    assert mp["budget_met"] is True
    final = next(v for v in report["validations"] if v["artifact"] == "mixed")
    assert [s["shape"] for s in final["shapes"]] == ["b1-s128", "b4-s128"]
    assert final["metrics"]["cosine_mean"] == min(s["metrics"]["cosine_mean"] for s in final["shapes"]) >= 0.999
    assert final["worst_shape"]["cosine_mean"] in ("b1-s128", "b4-s128")
    uniform = next(v for v in report["validations"] if v["artifact"] == "int8")
    assert uniform["worst_shape"]["cosine_mean"] == "b4-s128"  # onnxruntime's dynamic INT8 falls in the trap too


def test_static_int8_is_untouched_by_padding(padding_trap, write_recipe, tmp_path):
    recipe = trap_recipe(padding_trap, [B1, B4], ["sint8", "fp32"])
    report = api.build(write_recipe(recipe), output=tmp_path / "static").report
    mp = report["mixed_precision"]
    shapes = mp["evaluations"][0]["metrics"]["shapes"]
    assert (
        abs(shapes["b1-s128"]["cosine_mean"] - shapes["b4-s128"]["cosine_mean"]) < 1e-4
    )  # scales fixed: no batch effect
    static = [i for i in mp["islands"] if i["precision"] == "sint8" and i["kind"] != "gather"]
    assert static and all({"alpha", "x_scale", "x_zero_point"} <= set(i["detail"]) for i in static)


def test_shapes_must_agree_with_a_fixed_export(run_cli, write_recipe, tiny_bert):
    recipe = base_recipe(
        str(tiny_bert), export={"batch_size": 1, "sequence_length": 32}, validation={"shapes": [B1, {"batch_size": 8}]}
    )
    path = write_recipe(recipe)
    result = run_cli("build", path)
    assert result.exit_code == 1
    assert "validation.shapes.1.batch_size is 8 but export.batch_size fixes it to 1" in result.stderr


def test_pair_safe_weights_never_saturate_a_vpmaddubsw_pair():
    weight = np.random.default_rng(0).normal(size=(257, 96)).astype(np.float32)
    weight[10:12, 3] = [4.0, 4.1]  # two large same-sign neighbours: the worst case
    q, scale = pair_safe_int8(weight)
    padded = np.vstack([q.astype(np.int32), np.zeros((1, 96), np.int32)])
    assert np.abs(padded[0::2] + padded[1::2]).max() <= 128 and np.abs(q).max() <= 127
    even, odd = padded[0::2], padded[1::2]
    # the largest int16 sum VPMADDUBSW can form from uint8 activations (0..255) and these weights
    worst = np.maximum(
        255 * np.maximum(even, 0) + 255 * np.maximum(odd, 0), 255 * -np.minimum(even, 0) + 255 * -np.minimum(odd, 0)
    )
    assert worst.max() <= 32767
    plain_q, plain_scale = quantize_symmetric(weight, axis=1)
    assert np.all(scale >= plain_scale - 1e-9) and np.median(scale / plain_scale) < 1.5  # mostly a small cost
    assert np.abs(q * scale - weight).max() <= scale.max() * 1.01
