"""Validation metrics: the numbers come from edgeq.tasks.fidelity, their judgement from edgeq.tasks.judge; both
re-exported here for the validate stage's readers."""

from __future__ import annotations

from edgeq.tasks.fidelity import EXACT, compare, cosines, fidelity, nearest_neighbours, nn_agreement, sample_cosines
from edgeq.tasks.judge import HIGHER_IS_BETTER, TASK_METRICS, judge, worst_case

__all__ = [
    "EXACT",
    "HIGHER_IS_BETTER",
    "TASK_METRICS",
    "compare",
    "cosines",
    "fidelity",
    "judge",
    "nearest_neighbours",
    "nn_agreement",
    "sample_cosines",
    "worst_case",
]
