"""The task layer: one module per task, registered here explicitly. Everything else asks a Task object what to
feed, what to compare and which metrics to compute; nothing outside this package tests a task's name."""

from __future__ import annotations

from pathlib import Path

from edgeq.errors import ModelError, RecipeError
from edgeq.model_folder import config_of
from edgeq.tasks import (
    feature_extraction,
    image_classification,
    question_answering,
    text_classification,
    text_generation,
    token_classification,
)
from edgeq.tasks.base import Batch, Sample, Task
from edgeq.tasks.metrics import COMMON, Metric

TASKS: dict[str, Task] = {
    module.TASK.name: module.TASK
    for module in (
        feature_extraction,
        text_classification,
        token_classification,
        question_answering,
        image_classification,
        text_generation,
    )
}
TASK_NAMES = tuple(TASKS)
# every metric a validation may report, each once: the common ones, then each task's in registry order
METRICS: tuple[Metric, ...] = tuple(dict.fromkeys((*COMMON, *(m for t in TASKS.values() for m in t.own_metrics))))
# config.json model_type values of vision transformers (the rest are read as text models)
VISION_MODEL_TYPES = {
    "vit",
    "deit",
    "beit",
    "swin",
    "swinv2",
    "convnext",
    "convnextv2",
    "dinov2",
    "levit",
    "mobilevit",
    "mobilevitv2",
    "data2vec-vision",
    "efficientformer",
    "pvt",
    "cvt",
    "focalnet",
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise RecipeError(f"unknown task '{name}'", f"Tasks: {', '.join(TASK_NAMES)}")
    return TASKS[name]


def model_config(model_dir: Path) -> dict:
    return config_of(model_dir)


# Models whose position ids start after the padding id (transformers' create_position_ids_from_input_ids): a
# RoBERTa with 514 positions takes 512 tokens.
PADDING_OFFSET_POSITIONS = {
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "mpnet",
    "longformer",
    "data2vec-text",
    "esm",
}


def model_positions(model_dir: Path) -> int | None:
    """The most tokens a text may have: the model's position table (max_position_embeddings / n_positions), less
    the padding offset of RoBERTa-style models; None when its config gives none."""
    return positions_in(model_config(model_dir))


def positions_in(config: dict) -> int | None:
    """model_positions of a config.json already read."""
    limit = config.get("max_position_embeddings") or config.get("n_positions")
    if not isinstance(limit, int):
        return None
    if config.get("model_type") in PADDING_OFFSET_POSITIONS:
        limit -= int(config.get("pad_token_id") or 0) + 1
    return limit


def positions_phrase(model_dir: Path) -> str:
    """The model's limit in words: `max_position_embeddings (64)`, with a RoBERTa-style padding offset named."""
    config = model_config(model_dir)
    table = config.get("max_position_embeddings") or config.get("n_positions")
    limit = model_positions(model_dir)
    return f"max_position_embeddings ({table})" + (f" less its padding offset: {limit}" if limit != table else "")


def default_length(model_dir: Path) -> int:
    """Tokens per text when nothing says: 128, or the model's position table when that is shorter."""
    from edgeq.data_source import length_for_model

    return length_for_model(model_positions(model_dir))


def detect_task(model_dir: Path) -> tuple[Task, str]:
    """The task a model folder's config.json architectures imply, and why (in words)."""
    return task_for_config(model_config(model_dir), model_dir)


def task_for_config(config: dict, model_dir: Path | str) -> tuple[Task, str]:
    """detect_task of a config.json already read (`model_dir` names it in an error)."""
    architecture = (config.get("architectures") or [""])[0]
    for task in TASKS.values():
        if task.head_suffixes and architecture.endswith(task.head_suffixes):
            return task, f"config.json architectures[0] is {architecture}"
    if config.get("model_type") in VISION_MODEL_TYPES:
        raise ModelError(
            f"'{model_dir}' is a {architecture or config.get('model_type')} vision model without a classification head",
            "Set model.task, or use a ...ForImageClassification model",
        )
    return TASKS["feature-extraction"], f"config.json architectures[0] is {architecture or 'not given'} (no task head)"


def resolve_task(name: str | None, model_dir: Path) -> tuple[Task, str]:
    """The recipe's task (checked against the architecture) or the detected one, with the reason."""
    if name is None:
        return detect_task(model_dir)
    task = get_task(name)
    config = model_config(model_dir)
    architecture = (config.get("architectures") or [""])[0]
    vision = config.get("model_type") in VISION_MODEL_TYPES
    if task.head_suffixes and architecture and not architecture.endswith(task.head_suffixes):
        raise ModelError(
            f"model.task is {name} but the model is a {architecture}, which has no {name} head",
            f"Use a ...{task.head_suffixes[0]} model, or omit model.task to let edgeq detect it",
        )
    if config and (task.modality == "image") != vision:
        kind = "a vision" if vision else "a text"
        raise ModelError(
            f"model.task is {name} but '{model_dir}' is {kind} model ({config.get('model_type')})",
            "Omit model.task to let edgeq detect it",
        )
    return task, "set by the recipe"


__all__ = ["Batch", "Sample", "TASKS", "TASK_NAMES", "Task", "detect_task", "get_task", "resolve_task"]
