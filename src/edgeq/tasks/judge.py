"""Judging measured metrics: pass/fail against a recipe's thresholds, and the worst value of each metric over the
shapes a model was measured at. Which way is worse comes from each task's metric declarations (tasks/metrics.py)."""

from __future__ import annotations

from edgeq.tasks import METRICS
from edgeq.tasks.fidelity import EXACT
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


def worst_case(per_shape: list[dict], labels: list[str]) -> tuple[dict, dict[str, str]]:
    """The worst value of every metric over shapes (the lowest where higher is better, else the highest; a
    missing or non-finite value is worst of all), and the shape each came from."""
    metrics, worst = {}, {}
    for key in dict.fromkeys(k for m in per_shape for k in m):  # a metric some shapes lack counts where measured
        values = [(m[key], label) for m, label in zip(per_shape, labels) if key in m]
        if key == "sqnr_db" and all(v is EXACT for v, _ in values):
            metrics[key], worst[key] = EXACT, labels[0]
            continue
        missing = [(v, label) for v, label in values if v is None]
        if missing:
            metrics[key], worst[key] = None, missing[0][1]
            continue
        pick = min if key in HIGHER_IS_BETTER else max
        if not all(isinstance(v, (int, float)) for v, _ in values):  # counts and notes: the first shape's
            metrics[key], worst[key] = values[0]
            continue
        metrics[key], worst[key] = pick(values, key=lambda item: item[0])
    return metrics, worst
