"""The pass/fail judgement of validation metrics against a recipe's thresholds (the numbers themselves come from
edgeq.tasks.fidelity, re-exported here)."""

from __future__ import annotations

from edgeq.tasks import METRICS
from edgeq.tasks.fidelity import EXACT, compare, cosines, fidelity, nearest_neighbours, nn_agreement, sample_cosines
from edgeq.tasks.metrics import COMMON, higher_is_better

# the names of the tasks' own metrics, and the metrics whose threshold is a minimum (the others are maximums)
TASK_METRICS = tuple(m.name for m in METRICS if m not in COMMON)
HIGHER_IS_BETTER = higher_is_better(METRICS)


def judge(metrics: dict[str, float], thresholds: dict[str, float]) -> list[str]:
    """The thresholds the metrics break, in words ('cosine_mean 0.981 < 0.99'); empty means passed."""
    failures = []
    for name, limit in thresholds.items():
        value = metrics.get(name)
        if name == "sqnr_db" and name in metrics and value is EXACT and metrics.get("max_abs_error") == 0:
            continue
        if value is None:
            failures.append(f"{name} not measured or not finite (threshold {limit})")
        elif name in HIGHER_IS_BETTER and value < limit:
            failures.append(f"{name} {value:g} < {limit:g}")
        elif name not in HIGHER_IS_BETTER and value > limit:
            failures.append(f"{name} {value:g} > {limit:g}")
    return failures


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
]
