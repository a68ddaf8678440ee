"""The metrics a validation reports, each declared once: its direction, the recipe threshold it may carry (with the
threshold's bounds and description), and its rank among the headline figures a summary shows. The common ones
(cosine, SQNR, errors) are here; each task module declares its own, and the task registry collects them. The
recipe schema's `Thresholds`, the judgement (higher-is-better), the build summary and report.html read them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    threshold: str | None = None  # the recipe threshold's description; None: no threshold may name it
    low: float | None = None  # the threshold's bounds
    high: float | None = None
    strictly_above_low: bool = False
    default: float | None = None  # the threshold's default
    headline: int | None = None  # rank among the headline figures (lower first); None: not a headline
    delta_threshold: str | None = None  # description of a threshold on <name>_delta, when a recipe may set one


COMMON = (
    Metric("cosine_mean", True, "Minimum mean cosine vs FP32.", low=-1, high=1, default=0.99, headline=50),
    Metric("cosine_min", True, "Minimum worst-case cosine vs FP32.", low=-1, high=1, headline=60),
    Metric("max_abs_error", False, "Maximum absolute error vs FP32.", low=0, strictly_above_low=True),
    Metric("sqnr_db", True, "Minimum signal-to-quantization-noise ratio (dB)."),
    Metric("mean_abs_error", False),
)


def higher_is_better(metrics: tuple[Metric, ...]) -> set[str]:
    """Every name whose threshold is a minimum, with its FP32 (`_reference`) and difference (`_delta`) forms."""
    return {f"{m.name}{suffix}" for m in metrics if m.higher_is_better for suffix in ("", "_reference", "_delta")}


def headline_order(metrics: tuple[Metric, ...]) -> tuple[str, ...]:
    """The headline metrics, most telling first."""
    return tuple(m.name for m in sorted((m for m in metrics if m.headline is not None), key=lambda m: m.headline))
