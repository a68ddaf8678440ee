"""The architecture matrix: tiny random models of nine text and three vision architectures, built from configs,
through every task they have a head for, dynamic and static quantization, onnxruntime's fusions and the
mixed-precision stage. Random weights prove the mechanics (export, inputs, islands, metrics), never quality."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import host_device
from tiny_models import (
    DATA,
    TEST_DATA,
    TEXT_ARCHITECTURES,
    VISION_ARCHITECTURES,
    make_image_folder,
    make_text_model,
    make_vision_model,
)

from edgeq import api

TEXT_TASKS = ("feature-extraction", "text-classification", "token-classification", "question-answering")
LABELLED = {
    "text-classification": "accuracy",
    "token-classification": "f1",
    "question-answering": "answer_f1",
    "image-classification": "accuracy",
}
TASK_METRIC = {
    "feature-extraction": "nn_agreement",
    "text-classification": "top1_agreement",
    "token-classification": "token_agreement",
    "question-answering": "span_exact_match",
    "image-classification": "top1_agreement",
}
FUSED = {"bert", "roberta", "vit", "swin"}  # onnxruntime's bert, vit and swin fusion families


def data_for(task: str, images) -> dict:
    return {
        "feature-extraction": {"path": str(DATA / "validation.txt")},
        "text-classification": {"path": str(TEST_DATA / "sentiment.jsonl"), "field": "text", "label_field": "label"},
        "token-classification": {"path": str(TEST_DATA / "entities.jsonl"), "field": "words", "label_field": "tags"},
        "question-answering": {
            "path": str(TEST_DATA / "questions.jsonl"),
            "question_field": "question",
            "context_field": "context",
            "label_field": "answer",
        },
        "image-classification": {"path": str(images)},
    }[task]


def cases():
    found = []
    for index, arch in enumerate(TEXT_ARCHITECTURES):
        for offset, task in enumerate(TEXT_TASKS):
            found.append((arch, task, "static" if (index + offset) % 4 == 0 else "dynamic"))
    found += [
        (arch, "image-classification", mode)
        for arch, mode in zip(VISION_ARCHITECTURES, ("static", "dynamic", "dynamic"))
    ]
    return found


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("photos"))


@pytest.mark.parametrize(("arch", "task", "mode"), cases(), ids=lambda v: str(v))
def test_architecture_builds_and_reports_its_task(arch, task, mode, images, tmp_path):
    model = (
        make_vision_model(tmp_path / "model", arch)
        if task == "image-classification"
        else make_text_model(tmp_path / "model", arch, task)
    )
    data = data_for(task, images)
    quantization = {"mode": mode, "calibration": {"data": data, "samples": 12}}
    if mode == "dynamic":
        quantization["op_types"] = ["MatMul", "Attention", "Gather"]
    recipe = {
        "name": f"{arch}-{task}",
        "model": {"source": str(model)},  # no task: detected from config.json
        "quantization": quantization,
        "validation": {
            "data": data,
            "samples": 16,
            "shapes": [{"batch_size": 1}, {"batch_size": 4}],
            "thresholds": {"cosine_mean": 0.5},
        },
        "targets": [host_device()],
    }
    if arch in FUSED:
        recipe["optimize"] = {"enabled": True}
    if mode == "dynamic":
        recipe["mixed_precision"] = {
            "proxy_samples": 6,
            "candidates": ["sint8", "int8", "fp32"],
            "budget": {"min_cosine_mean": 0.9999},
        }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = api.build(path, output=tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    export = report["stages"][0]
    assert export["task"] == task and "architectures" in export["task_reason"]
    assert export["export_check"]["cosine_min"] > 0.999
    if arch in FUSED:
        optimize = next(s for s in report["stages"] if s["name"] == "optimize")
        assert optimize["fusion_family"] == {"vit": "vit", "swin": "swin"}.get(arch, "bert")
    final = next(v for v in report["validations"] if v["artifact"] == report["final_artifact"])
    assert [s["shape"] for s in final["shapes"]] == (
        ["b1", "b4"] if task == "image-classification" else ["b1-s128", "b4-s128"]
    )
    metrics = final["metrics"]
    assert {"cosine_mean", "cosine_min", "sqnr_db", "max_abs_error", TASK_METRIC[task]} <= set(metrics)
    if task in LABELLED:
        name = LABELLED[task]
        assert {name, f"{name}_reference", f"{name}_delta"} <= set(metrics)
    assert metrics["cosine_mean"] > 0.9, metrics  # random weights: mechanics, not quality
    if mode == "dynamic":
        mp = report["mixed_precision"]
        assert mp["islands"] and all(i["reason"] for i in mp["islands"])
        assert {i["kind"] for i in mp["islands"]} & {"matmul", "attention"}
    assert result.exit_code == 0
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert TASK_METRIC[task] in markdown
