"""Activation statistics of the islands' inputs, over real tokens only, and the SmoothQuant strength per island.

Padded positions are left out on purpose: their values are whatever the model computes for a [PAD] token, which
no output depends on, and which differ from real tokens. Statistics that include them (or that never saw them,
as at batch 1) make a scale that the real tokens then pay for. Measured on MiniLM: SmoothQuant factors from batch-1
statistics (no padding) took dynamic INT8 from cosine 0.996 at batch 1 to 0.956 at batch 32, because the padded
rows of a channel that smoothing amplifies then set the whole tensor's run-time scale."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ROWS = 4096
ALPHAS = (0.0, 0.5, 0.65, 0.8, 0.9)
KEEP_UNSMOOTHED_DB = 0.25  # prefer no smoothing (no extra Mul) unless smoothing gains more than this


@dataclass
class ActivationStats:
    """Per-channel extremes of one activation tensor over real tokens, and a sample of its rows."""

    minimum: np.ndarray
    maximum: np.ndarray
    rows: np.ndarray

    @property
    def absmax(self) -> np.ndarray:
        return np.maximum(np.abs(self.minimum), np.abs(self.maximum))


class StatisticsAccumulator:
    """Per-channel extremes and a uniform sample of at most MAX_ROWS real-token rows, batch by batch: memory is
    bounded by the sample, whatever the number of calibration texts (every row gets a random key; the rows with
    the smallest keys are kept, in the order they came). Rows are gathered in chunks and pruned when they pass
    twice the sample, not at every batch: the same sample, without copying it once per text."""

    def __init__(self, seed: int = 0):
        self.random = np.random.default_rng(seed)
        self.minimum = self.maximum = None
        self.chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self.held = 0

    def add(self, values: np.ndarray, mask: np.ndarray | None) -> None:
        if mask is not None and values.ndim == 3 and values.shape[:2] == mask.shape:
            rows = values[mask.astype(bool)]
        else:
            rows = values.reshape(-1, values.shape[-1])
        rows = rows.astype(np.float32)
        if not len(rows):
            return
        low, high = rows.min(axis=0), rows.max(axis=0)
        self.minimum = low if self.minimum is None else np.minimum(self.minimum, low)
        self.maximum = high if self.maximum is None else np.maximum(self.maximum, high)
        self.chunks.append((rows, self.random.random(len(rows))))
        self.held += len(rows)
        if self.held > 2 * MAX_ROWS:
            self._prune()

    def _prune(self) -> None:
        rows = np.concatenate([r for r, _ in self.chunks])
        keys = np.concatenate([k for _, k in self.chunks])
        keep = np.sort(np.argsort(keys, kind="stable")[:MAX_ROWS])
        self.chunks, self.held = [(rows[keep], keys[keep])], len(keep)

    def result(self) -> ActivationStats:
        if not self.chunks:
            return ActivationStats(self.minimum, self.maximum, None)
        self._prune()
        return ActivationStats(self.minimum, self.maximum, self.chunks[0][0])


def smoothing_factors(stats: ActivationStats, weight: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-input-channel factors s = max|x|^a / max|w|^(1-a) (ones when alpha is 0)."""
    if alpha == 0:
        return np.ones(weight.shape[0], dtype=np.float32)
    w_absmax = np.abs(weight).max(axis=1)
    return (np.maximum(stats.absmax, 1e-5) ** alpha / np.maximum(w_absmax, 1e-5) ** (1 - alpha)).astype(np.float32)


def asymmetric_uint8(low: float, high: float) -> tuple[np.float32, np.uint8]:
    """Scale and zero point of uint8 quantization covering [low, high] (always including 0)."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = (high - low) / 255.0 or 1.0
    return np.float32(scale), np.uint8(np.clip(round(-low / scale), 0, 255))


def static_range(stats: ActivationStats, smooth: np.ndarray) -> tuple[np.float32, np.uint8]:
    """The uint8 range of the smoothed activation x / s over the calibration tokens."""
    return asymmetric_uint8(float((stats.minimum / smooth).min()), float((stats.maximum / smooth).max()))


def simulated_sqnr(
    stats: ActivationStats, weight: np.ndarray, alpha: float, reference: np.ndarray | None = None
) -> float:
    """SQNR (dB) of x @ W when x (smoothed, static uint8) and W (per-column symmetric INT8) are quantized,
    on the sampled rows: a local, kernel-independent measure to choose alpha. `reference`: x @ W, when the caller
    has it (it does not depend on alpha). Products in float32 (their rounding is ~1e-7 of the signal, the
    quantization noise measured here ~1e-2), sums of squares in float64."""
    from edgeq.quantize.numerics import quantize_symmetric

    smooth = smoothing_factors(stats, weight, alpha)
    scale, zero = static_range(stats, smooth)
    x = stats.rows / smooth
    x_q = (np.clip(np.round(x / scale) + float(zero), 0, 255) - float(zero)) * scale
    w_q, w_scale = quantize_symmetric(weight * smooth[:, None], axis=1)
    if reference is None:
        reference = stats.rows.astype(np.float32) @ weight.astype(np.float32)
    noise = reference - x_q.astype(np.float32) @ (w_q.astype(np.float32) * w_scale.astype(np.float32))
    return float(10 * np.log10(sum_of_squares(reference) / max(sum_of_squares(noise), 1e-30)))


def sum_of_squares(values: np.ndarray, chunks: int = 16) -> float:
    """Σx² in float64, a slice of rows at a time: a float64 copy of a whole 4096×1536 product cost 10x as much
    (fresh pages for each temporary), for the same sum."""
    return sum(float(np.square(part, dtype=np.float64).sum()) for part in np.array_split(values, chunks))


def best_alpha(stats: ActivationStats, weight: np.ndarray) -> tuple[float, dict[float, float]]:
    """The SmoothQuant strength with the best simulated SQNR; no smoothing unless it gains KEEP_UNSMOOTHED_DB."""
    reference = stats.rows.astype(np.float32) @ weight.astype(np.float32)
    scores = {alpha: round(simulated_sqnr(stats, weight, alpha, reference), 2) for alpha in ALPHAS}
    best = max(scores, key=scores.get)
    if scores[best] - scores[0.0] < KEEP_UNSMOOTHED_DB:
        best = 0.0
    return best, scores
