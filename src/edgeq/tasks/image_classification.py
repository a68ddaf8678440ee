"""Image classification (ViT, DeiT, BEiT, Swin, ...): images from a folder (sub-folders are labels) or a list
file, preprocessed as the model's preprocessor_config.json says; logits compared; accuracy with labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.data_source import DataSource
from edgeq.tasks.base import Batch, Sample, Task, class_id, first_output, model_labels
from edgeq.tasks.classification import CLASSIFICATION_METRICS, logits_metrics


class ImageClassification(Task):
    name = "image-classification"
    export_task = "image-classification"
    auto_class = "AutoModelForImageClassification"  # the PyTorch class the export is checked against
    modality = "image"
    head_suffixes = ("ForImageClassification", "ForImageClassificationWithTeacher")
    own_metrics = CLASSIFICATION_METRICS
    compares = "class logits"

    def read(self, source: DataSource, limit: int | None, key: str, model_dir: Path) -> list[Sample]:
        from edgeq.tasks.image_inputs import list_images, open_image

        found = list_images(Path(source.path), key)
        found = found[:limit] if limit else found
        labels = model_labels(model_dir)
        samples = []
        for number, (path, label) in enumerate(found, start=1):
            open_image(Path(path))  # refuse an unreadable file now, before any work
            label_id = class_id(label, labels, f"{key}: '{path}'") if label is not None else None
            samples.append(Sample(image=path, label=label_id, row=number))
        return samples

    def inputs(self, model_dir: Path, sequence_length: int, pad_to_length: bool):
        from edgeq.tasks.image_inputs import ImageInputs

        return ImageInputs(model_dir)

    def encode(self, samples: list[Sample], inputs) -> Batch:
        return Batch(inputs.encode([s.image for s in samples]), None, samples)

    def shape_label(self, batch_size: int, sequence_length: int) -> str:
        return f"b{batch_size}"

    def compared(self, outputs: dict[str, np.ndarray], batch: Batch) -> list[np.ndarray]:
        return list(np.asarray(first_output(outputs, "logits"), dtype=np.float32))

    def metrics(self, reference, candidate, samples, inputs, followed=None) -> dict:
        return logits_metrics(reference, candidate, [s.label for s in samples])

    def example_feed(self, inputs, batch_size: int) -> dict[str, np.ndarray]:
        height, width = _input_size(inputs.config)
        pixels = np.random.default_rng(0).standard_normal((batch_size, 3, height, width))
        return {"pixel_values": pixels.astype(np.float32)}


def _input_size(config: dict) -> tuple[int, int]:
    size = config.get("crop_size") if config.get("do_center_crop") else config.get("size")
    if isinstance(size, dict) and "height" in size:
        return int(size["height"]), int(size["width"])
    edge = (size or {}).get("shortest_edge", 224) if isinstance(size, dict) else int(size or 224)
    return edge, edge


TASK = ImageClassification()
