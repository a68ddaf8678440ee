"""A first recipe for a model and a device, without writing one: `edgeq init` prints it (commented), and
`edgeq build --model --device` builds with it. The choices follow the device profile's rules (what it runs, fixed
shapes, its quantization scheme) and the task edgeq detects; data paths point at the samples edgeq ships until
the user replaces them with their own."""

from __future__ import annotations

from pathlib import Path

from edgeq.errors import DataError
from edgeq.resources import bundled_dir
from edgeq.targets.profiles import DeviceProfile

# Unlabelled samples edgeq ships, per task: agreement with FP32 needs no labels (add label_field for accuracy).
SAMPLES = {
    "feature-extraction": ({"path": "calibration.txt"}, {"path": "validation.txt"}),
    "text-classification": ({"path": "calibration.txt"}, {"path": "validation.txt"}),
    "token-classification": (
        {"path": "entities.jsonl", "field": "words"},
        {"path": "entities.jsonl", "field": "words"},
    ),
    "question-answering": (
        {"path": "questions.jsonl", "question_field": "question", "context_field": "context"},
        {"path": "questions.jsonl", "question_field": "question", "context_field": "context"},
    ),
    "text-generation": ({"path": "lm-calibration.txt"}, {"path": "lm-validation.txt"}),
}


def starter_recipe(model: str, model_dir: Path, device: DeviceProfile, data: str | None = None) -> str:
    """The recipe as commented YAML text (it parses to a valid recipe: `load_recipe` accepts it)."""
    from edgeq.tasks import detect_task

    task, reason = detect_task(model_dir)
    calibration, validation = _data(task.name, data)
    name = _name(model, device)
    lines = [
        f"# edgeq starter recipe for {model} on {device.id} ({device.description}).",
        f"# Task {task.name}: {reason}. Written by `edgeq init`; every key is documented in docs/recipe.md.",
        f"name: {name}",
        f"description: {task.name} model {model}, quantized for {device.id}",
        "model:",
        f"  source: {_quote(model)}",
        f"  task: {task.name}",
        "export:",
        f"  opset: {min(17, device.max_opset or 17)}",
        *_shapes(device, task, model_dir),
        *_quantization(device, task, calibration),
        *_mixed_precision(device, task),
        "validation:",
        "  data:                            # replace with held-out data of your own",
        *[f"    {k}: {_quote(v)}" for k, v in validation.items()],
        f"  samples: {48 if device.uses_qnn else 100}",
        *_thresholds(task),
        f"targets: [{device.id}]",
    ]
    return "\n".join(lines) + "\n"


def _data(task: str, data: str | None) -> tuple[dict, dict]:
    if data is not None:
        source = {"path": str(Path(data).resolve())}
        return source, source
    if task not in SAMPLES:
        raise DataError(
            f"edgeq ships no sample data for {task} models",
            "Pass --data with a folder of images (sub-folders = labels) or a .txt of image paths",
        )
    folder = bundled_dir("recipes") / "data"
    return tuple({**entry, "path": str(folder / entry["path"])} for entry in SAMPLES[task])  # type: ignore[return-value]


def _shapes(device: DeviceProfile, task, model_dir: Path) -> list[str]:
    from edgeq.tasks import default_length

    fixed = device.quantization.static_shapes or device.coverage is not None  # mobile EPs take more at fixed shapes
    if not fixed or task.name == "text-generation":
        return []  # every length then defaults to min(128, the model's position table)
    length = min(64, default_length(model_dir)) if device.uses_qnn else default_length(model_dir)
    return (
        [
            "  batch_size: 1                   # fixed shapes: the device compiles them (or covers more of the graph)",
            f"  sequence_length: {length}",
        ]
        if task.modality == "text"
        else ["  batch_size: 1"]
    )


def _quantization(device: DeviceProfile, task, calibration: dict) -> list[str]:
    rules = device.quantization
    data = [
        "  calibration:",
        "    data:                          # replace with text like your users' input",
        *[f"      {k}: {_quote(v)}" for k, v in calibration.items()],
        "    samples: 64",
    ]
    if task.name == "text-generation":
        return [
            "quantization:",
            "  mode: int4                       # 4-bit weights (MatMulNBits); FP32 activations and KV cache",
            "  op_types: [MatMul, Gather]       # every projection, the LM head and the embedding table",
            *data,
        ]
    if device.uses_qnn:
        return [
            "quantization:",
            "  mode: static                     # the HTP runs integer (QDQ) models only",
            "  format: qdq",
            "  activation_type: uint16",
            "  weight_type: uint8",
            "  per_channel: true",
            "  symmetric_weights: false",
            "  attention_mask_fill: -100        # a -3.4e38 mask fill leaves no 16-bit scale for the scores",
            *data,
        ]
    if device.is_dpu:
        return [
            "quantization:",
            "  mode: static                     # the DPU: INT8, symmetric, per-tensor, power-of-two scales",
            "  format: qdq",
            "  activation_type: int8",
            "  weight_type: int8",
            "  per_channel: false",
            "  symmetric_weights: true",
            "  symmetric_activations: true",
            "  op_types: [MatMul]",
            *data,
        ]
    if "dynamic" not in rules.modes:
        return ["quantization:", f"  mode: {rules.modes[0]}", *data]
    if device.is_cpu:
        return [
            "quantization:",
            "  mode: dynamic                    # INT8 weights; the search adds static islands where they hold",
            *data,
        ]
    return [
        "quantization:",
        "  mode: static                     # a mobile EP takes a QDQ model",
        "  format: qdq",
        "  activation_type: uint8",
        "  weight_type: int8",
        "  per_channel: true",
        "  op_types: [MatMul, Gather]",
        *data,
    ]


def _mixed_precision(device: DeviceProfile, task) -> list[str]:
    rules = device.quantization
    if task.name == "text-generation":
        return [
            "mixed_precision:",
            "  candidates: [int4, int4g, w8]    # per projection: 4-bit RTN, 4-bit GPTQ, INT8",
            "  measure_top: 24                  # measure promotions for the 24 most damaged islands, not all",
            "  budget:",
            "    min_cosine_mean: null",
            "    ceilings_over_lowest:",
            "      kl_divergence_mean: 0.5     # at most half the KL (nats/token vs FP32) of 4-bit everywhere",
            "    max_size_over_lowest: 1.15     # at most 15% more bytes than 4-bit everywhere",
        ]
    if device.uses_qnn:
        return [
            "mixed_precision:",
            "  candidates: [a8w8, a16w8]        # per block: 8-bit activations where they hold",
            "  budget:",
            "    min_cosine_mean: 0.998",
        ]
    if device.is_dpu:
        return [
            "mixed_precision:",
            "  candidates: [xint8, w8]          # on the DPU, or on the CPU with INT8 weights",
            "  budget:",
            "    min_cosine_mean: 0.985",
        ]
    if device.is_cpu and "dynamic" in rules.modes:
        return [
            "mixed_precision:",
            "  candidates: [sint8, int8, fp32]  # per layer: static INT8, dynamic INT8, FP32",
            "  budget:",
            "    min_cosine_mean: 0.995",
        ]
    return []


def _thresholds(task) -> list[str]:
    if task.name == "text-generation":
        return ["  thresholds:", "    cosine_mean: null", "    next_token_top1_agreement: 0.85"]
    return ["  thresholds:", "    cosine_mean: 0.99"]


def _name(model: str, device: DeviceProfile) -> str:
    stem = Path(model.removeprefix("pkg:")).name.lower() or "model"
    clean = "".join(c if c.isalnum() or c in "-_" else "-" for c in stem).strip("-_") or "model"
    return f"{clean}-{device.id}"


def _quote(value) -> str:
    import json

    return json.dumps(str(value)) if isinstance(value, (str, Path)) else str(value)
