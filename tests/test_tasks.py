"""The task layer on its own: detection, inputs (pad ids, image preprocessing as Hugging Face does it), metrics
with labels, and every bad input one clear line."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import base_recipe
from onnx import TensorProto, helper
from tiny_models import TEST_DATA, make_image_folder, make_text_model, make_vision_model

from edgeq import api
from edgeq.recipe.schema import QuantizationConfig
from edgeq.tasks import TASKS, detect_task
from edgeq.tasks.question_answering import best_span, normalize
from edgeq.tasks.text_inputs import TextInputs
from edgeq.tasks.token_classification import entity_f1


def assert_error(result, line: str, exit_code: int = 1) -> None:
    assert result.exit_code == exit_code, result.output
    assert result.stderr.strip().splitlines() == [line]


@pytest.fixture(scope="module")
def roberta_classifier(tmp_path_factory):
    return make_text_model(tmp_path_factory.mktemp("roberta"), "roberta", "text-classification")


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return make_vision_model(tmp_path_factory.mktemp("vit"), "deit")


def test_detection_from_architectures(roberta_classifier, vit, tiny_bert):
    assert detect_task(roberta_classifier)[0].name == "text-classification"
    assert detect_task(vit)[0].name == "image-classification"
    task, reason = detect_task(tiny_bert)
    assert task.name == "feature-extraction" and "BertModel" in reason


def test_text_inputs_use_the_tokenizers_own_pad_token(roberta_classifier):
    inputs = TextInputs(roberta_classifier, 32)
    assert inputs.pad_id == 1  # RoBERTa's <pad>, not [PAD] and not 0
    feed = inputs.encode(["short", "a much longer text than the other one"])
    assert feed["input_ids"][0, -1] == 1 and feed["attention_mask"][0, -1] == 0
    assert feed["input_ids"][0, 0] == inputs.tokenizer.token_to_id("<s>")


def test_image_preprocessing_matches_hugging_face(vit, tmp_path):
    from PIL import Image
    from transformers import AutoImageProcessor

    folder = make_image_folder(tmp_path / "photos", per_label=1)
    path = next(folder.rglob("*.png"))
    ours = TASKS["image-classification"].inputs(vit, 0, False).encode([str(path)])["pixel_values"]
    theirs = AutoImageProcessor.from_pretrained(str(vit))(Image.open(path).convert("RGB"), return_tensors="np")[
        "pixel_values"
    ]
    assert ours.shape == theirs.shape == (1, 3, 32, 32)
    assert np.abs(ours - theirs).max() < 0.02  # DeiT: resize 40 (bicubic), centre crop 32, normalise


def test_entity_f1_and_answer_helpers():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    assert entity_f1(gold, gold) == 1.0
    assert entity_f1(gold, [["B-PER", "O", "O", "B-LOC"]]) == 0.5  # the person's span is cut short
    assert normalize("The  Station, square!") == "station square"
    logits = np.full((6, 2), -5.0)
    logits[2, 0], logits[4, 1], logits[1, 1] = 3.0, 2.0, 9.0  # an end before the start is never taken
    assert best_span(logits) == (2, 4)


@pytest.mark.fast
def test_labelled_classification_reports_accuracy_for_fp32_and_the_final_model(
    roberta_classifier, write_recipe, tmp_path
):
    data = {"path": str(TEST_DATA / "sentiment.jsonl"), "field": "text", "label_field": "label"}
    recipe = base_recipe(
        str(roberta_classifier),
        model={"task": "text-classification"},
        validation={"data": data, "samples": 30, "thresholds": {"cosine_mean": 0.9, "accuracy_delta": -0.2}},
    )
    report = api.build(write_recipe(recipe), output=tmp_path / "out").report
    final = next(v for v in report["validations"] if v["artifact"] == "int8")
    metrics = final["metrics"]
    assert (
        metrics["labelled_samples"] == 30 and 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["accuracy_reference"] <= 1
    )
    assert metrics["accuracy_delta"] == pytest.approx(metrics["accuracy"] - metrics["accuracy_reference"], abs=1e-6)
    assert final["thresholds"]["accuracy_delta"] == -0.2
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Task metrics" in markdown and "| int8 |" in markdown and "accuracy" in markdown


# ------------------------------------------------------------------------------------------------ bad input
def test_data_file_that_is_not_utf8(run_cli, write_recipe, tmp_path, tiny_bert):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("first line\ncaf\xe9 au lait\n".encode("latin-1"))
    path = write_recipe(base_recipe(str(tiny_bert), validation={"data": {"path": str(bad)}}))
    assert_error(
        run_cli("build", path),
        f"Error: validation.data: '{bad}' line 2 is not UTF-8 (byte 0xe9). Save the file as UTF-8",
    )


def test_label_not_in_the_models_labels(run_cli, write_recipe, tmp_path, roberta_classifier):
    data = tmp_path / "labels.jsonl"
    data.write_text('{"t": "fine", "y": "positive"}\n{"t": "odd", "y": "sarcastic"}\n')
    recipe = base_recipe(
        str(roberta_classifier),
        model={"task": "text-classification"},
        validation={"data": {"path": str(data), "field": "t", "label_field": "y"}},
    )
    assert_error(
        run_cli("build", write_recipe(recipe)),
        f"Error: validation.data: '{data}' line 2: label 'sarcastic' is not one of the model's labels. "
        "The model's id2label has: negative, neutral, positive, 0, 1, 2",
    )


def test_labelled_field_missing_on_a_row(run_cli, write_recipe, tmp_path, roberta_classifier):
    data = tmp_path / "labels.csv"
    data.write_text("t,y\nfine,positive\nodd,\n")
    recipe = base_recipe(
        str(roberta_classifier),
        model={"task": "text-classification"},
        validation={"data": {"path": str(data), "field": "t", "label_field": "y"}},
    )
    assert_error(
        run_cli("build", write_recipe(recipe)),
        f"Error: validation.data: '{data}' line 3 has no field 'y'. Every record needs it",
    )


def test_task_that_does_not_match_the_architecture(run_cli, write_recipe, roberta_classifier):
    recipe = base_recipe(str(roberta_classifier), model={"task": "question-answering"})
    assert_error(
        run_cli("build", write_recipe(recipe)),
        "Error: model.task is question-answering but the model is a RobertaForSequenceClassification, which "
        "has no question-answering head. Use a ...ForQuestionAnswering model, or omit model.task to let "
        "edgeq detect it",
    )


def test_non_image_file_in_an_image_folder(run_cli, write_recipe, tmp_path, vit):
    folder = make_image_folder(tmp_path / "photos", per_label=1)
    (folder / "cat" / "notes.txt").write_text("not a picture")
    recipe = base_recipe(str(vit), model={"task": "image-classification"}, validation={"data": {"path": str(folder)}})
    assert_error(
        run_cli("build", write_recipe(recipe)),
        f"Error: '{folder / 'cat' / 'notes.txt'}' is not an image Pillow can read (UnidentifiedImageError). "
        "Keep only image files in the image folder",
    )


def _relu_model(opset: int = 17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def test_external_data_outside_the_models_folder(run_cli, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    model = _relu_model()
    from onnx.external_data_helper import convert_model_to_external_data

    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    onnx.save(model, str(folder / "model.onnx"))
    stored = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for entry in stored.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../elsewhere/weights.bin"
    onnx.save(stored, str(folder / "model.onnx"))
    for command in (["inspect", folder / "model.onnx"], ["quantize", folder / "model.onnx", "-o", tmp_path / "q"]):
        assert_error(
            run_cli(*command),
            f"Error: '{folder / 'model.onnx'}' keeps weights in '../elsewhere/weights.bin', "
            "outside its own folder. External data must sit beside the model; edgeq does "
            "not read files elsewhere",
        )
    assert not (tmp_path / "q").exists()


def test_opset_newer_than_onnxruntime(run_cli, tmp_path):
    path = tmp_path / "new.onnx"
    onnx.save(_relu_model(opset=30), str(path))
    result = run_cli("quantize", path, "-o", tmp_path / "q")
    assert result.exit_code == 1 and not (tmp_path / "q").exists()
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: onnxruntime ") and f"cannot load '{path}': Opset 30 is under development" in line
    assert line.endswith("Export it with an opset this onnxruntime supports (edgeq export --opset 17)")


def test_quantize_copies_only_a_models_companions(run_cli, tiny_onnx, tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    for name in ("model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_onnx.parent / name).read_bytes())
    (folder / "holiday.jpg").write_bytes(b"not yours to copy")
    (folder / "notes").mkdir()
    result = run_cli("quantize", folder / "model.onnx", "-o", tmp_path / "q")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == [
        "config.json",
        "model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


def test_threshold_on_a_metric_the_task_does_not_have(run_cli, write_recipe, tiny_bert):
    recipe = base_recipe(str(tiny_bert), validation={"thresholds": {"token_agreement": 0.9}})
    path = write_recipe(recipe)
    result = run_cli("build", path)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "Error: validation.thresholds.token_agreement: feature-extraction has no metric "
        "'token_agreement'. Its metrics: "
    )


def test_validate_command_on_question_answering(run_cli, tmp_path):
    model = make_text_model(tmp_path / "qa", "bert", "question-answering")
    fp32 = api.export(str(model), tmp_path / "fp32")
    quantized = api.quantize(fp32, tmp_path / "int8", QuantizationConfig(mode="dynamic"))
    result = run_cli(
        "validate",
        quantized,
        "--reference",
        fp32,
        "--data",
        TEST_DATA / "questions.jsonl",
        "--question-field",
        "question",
        "--context-field",
        "context",
        "--label-field",
        "answer",
        "--json",
    )
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)
    assert {"span_exact_match", "span_f1", "answer_f1", "answer_f1_reference"} <= set(entry["metrics"])


@pytest.mark.fast
def test_greedy_prompts_of_chat_texts_differ():
    """Chat texts open with one shared system turn: a greedy continuation's prompt is the text but its last 16
    tokens, so two texts that share their first 20 tokens still get different prompts (a short one is its own)."""
    from edgeq.tasks.base import Batch, Sample
    from edgeq.tasks.text_generation import GREEDY_TOKENS, PROMPT_TOKENS, greedy_prompts

    shared = list(range(100, 120))
    ids = np.zeros((3, 64), np.int64)
    ids[0, :60] = shared + list(range(500, 540))
    ids[1, :60] = shared + list(range(700, 740))
    ids[2, :9] = range(9)
    mask = (ids > 0) | (np.arange(64) == 0)
    mask[2, :9] = True
    batch = Batch({"input_ids": ids}, mask.astype(np.int64), [Sample(text=str(i)) for i in range(3)])
    first, second, short = greedy_prompts(batch)
    assert len(first) == len(second) == 60 - GREEDY_TOKENS > PROMPT_TOKENS and len(short) == 9
    assert not np.array_equal(first, second) and np.array_equal(first[:20], second[:20])


@pytest.mark.fast
def test_a_context_shared_by_texts_counts_once():
    """Chat texts share their system turn: a prediction made from the same tokens is counted once (its top-1, KL and
    the likelihood of the same next token), so a few flips there cannot outweigh the texts' own positions."""
    from edgeq.tasks.text_generation import compare_logits

    rng = np.random.default_rng(0)
    shared = [5, 6, 7, 8]
    texts = [np.array(shared + [9, 10]), np.array(shared + [11, 12, 13])]
    reference = [rng.normal(size=(len(t), 16)) for t in texts]
    candidate = [r.copy() for r in reference]
    for logits in candidate:  # the shared positions' top token changed in every text alike; the rest unchanged
        logits[:4, :] = logits[:4, ::-1]
    task = TASKS["text-generation"]
    compared = [compare_logits(r, c, t) for r, c, t in zip(reference, candidate, texts)]
    metrics = task.metrics(reference, compared, [], None)
    assert metrics["tokens"] == 4 + 2 + 3 and metrics["repeated_contexts"] == 4  # the second text's first 4 again
    flipped = np.concatenate([c.agree for c in compared[:1]])[:4]
    expected = (flipped.sum() + 2 + 3) / 9
    assert metrics["next_token_top1_agreement"] == pytest.approx(expected)
    # a per-position mean over both texts would weigh the shared positions twice
    both = np.concatenate([c.agree for c in compared]).mean()
    assert not flipped.all() and both < expected
    assert task.proxy_score(reference, compared) == pytest.approx(
        -np.mean(np.concatenate([compared[0].kl, compared[1].kl[4:]]))
    )
