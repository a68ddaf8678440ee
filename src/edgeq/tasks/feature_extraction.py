"""Sentence embeddings: token states mean-pooled over real tokens (what sentence-transformers users consume)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.data_source import DataSource
from edgeq.tasks.base import Batch, Sample, Task, first_output, text_records
from edgeq.tasks.metrics import Metric


class FeatureExtraction(Task):
    name = "feature-extraction"
    export_task = "feature-extraction"
    auto_class = "AutoModel"  # the PyTorch class the export is checked against
    own_metrics = (
        Metric(
            "nn_agreement",
            True,
            "Feature extraction: minimum share of texts whose nearest other text (by embedding cosine) is the same "
            "as with FP32.",
            low=0,
            high=1,
            headline=80,
        ),
    )
    compares = "mean-pooled token states (embeddings)"

    def read(self, source: DataSource, limit: int | None, key: str, model_dir: Path) -> list[Sample]:
        field = source.field or "text"
        from edgeq.data import field_of

        return [
            Sample(text=str(field_of(r, field, n, source.path, key)).strip(), row=n)
            for n, r in text_records(source, limit, key)
        ]

    def compared(self, outputs: dict[str, np.ndarray], batch: Batch) -> list[np.ndarray]:
        states = np.asarray(first_output(outputs, "last_hidden_state", "sentence_embedding"), dtype=np.float32)
        if states.ndim == 3:
            mask = batch.mask[..., None].astype(np.float32)
            states = (states * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)
        return list(states.reshape(states.shape[0], -1))

    def metrics(self, reference, candidate, samples, inputs, followed=None) -> dict:
        from edgeq.tasks.fidelity import fidelity, nn_agreement

        metrics = fidelity(reference, candidate)
        stacked = np.stack(candidate)
        if len(reference) >= 3 and np.isfinite(stacked).all():
            metrics["nn_agreement"] = round(nn_agreement(np.stack(reference), stacked), 6)
        return metrics


TASK = FeatureExtraction()
