"""Text classification: logits compared; top-1 agreement; accuracy against labels when the data has them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.data_source import DataSource
from edgeq.tasks.base import Batch, Sample, Task, class_id, first_output, model_labels, text_records
from edgeq.tasks.classification import CLASSIFICATION_METRICS, logits_metrics


class TextClassification(Task):
    name = "text-classification"
    export_task = "text-classification"
    auto_class = "AutoModelForSequenceClassification"  # the PyTorch class the export is checked against
    head_suffixes = ("ForSequenceClassification",)
    own_metrics = CLASSIFICATION_METRICS
    compares = "class logits"

    def read(self, source: DataSource, limit: int | None, key: str, model_dir: Path) -> list[Sample]:
        from edgeq.data import field_of

        labels = model_labels(model_dir) if source.label_field else {}
        samples = []
        for n, record in text_records(source, limit, key):
            text = str(field_of(record, source.field or "text", n, source.path, key)).strip()
            label = None
            if source.label_field:
                value = field_of(record, source.label_field, n, source.path, key)
                label = class_id(value, labels, f"{key}: '{source.path}' line {n}")
            samples.append(Sample(text=text, label=label, row=n))
        return samples

    def compared(self, outputs: dict[str, np.ndarray], batch: Batch) -> list[np.ndarray]:
        return list(np.asarray(first_output(outputs, "logits"), dtype=np.float32))

    def metrics(self, reference, candidate, samples, inputs, followed=None) -> dict:
        return logits_metrics(reference, candidate, [s.label for s in samples])


TASK = TextClassification()
