"""What text and image classification share: logits compared, top-1 agreement, and accuracy with labels."""

from __future__ import annotations

import numpy as np

from edgeq.tasks.base import labelled
from edgeq.tasks.metrics import Metric

CLASSIFICATION_METRICS = (
    Metric(
        "top1_agreement",
        True,
        "Classification: minimum share of inputs whose top-1 class matches FP32.",
        low=0,
        high=1,
        headline=70,
    ),
    Metric(
        "accuracy",
        True,
        "Classification with labels: minimum accuracy.",
        low=0,
        high=1,
        headline=20,
        delta_threshold="Classification with labels: minimum accuracy minus FP32's (e.g. -0.01).",
    ),
)


def logits_metrics(reference: list[np.ndarray], candidate: list[np.ndarray], labels: list[int | None]) -> dict:
    from edgeq.tasks.fidelity import fidelity

    metrics = fidelity(reference, candidate)
    ref, cand = np.stack(reference), np.stack(candidate)
    metrics["top1_agreement"] = round(float((ref.argmax(-1) == cand.argmax(-1)).mean()), 6)
    known = [i for i, label in enumerate(labels) if label is not None]
    if known:
        truth = np.array([labels[i] for i in known])
        labelled(metrics, "accuracy", (cand[known].argmax(-1) == truth).mean(), (ref[known].argmax(-1) == truth).mean())
        metrics["labelled_samples"] = len(known)
    return metrics
