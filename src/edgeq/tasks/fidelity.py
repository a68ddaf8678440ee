"""How far a candidate's outputs are from the reference's: cosines, nearest-neighbour agreement, SQNR and errors.
Numbers only, no judgement (that is edgeq.validate.metrics'): the tasks compute their metrics with these."""

from __future__ import annotations

import numpy as np

EXACT = None  # sqnr_db of an identical output: no noise at all


def cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    denom = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    return (ref * cand).sum(axis=1) / np.maximum(denom, 1e-12)


def nearest_neighbours(vectors: np.ndarray) -> np.ndarray:
    """Index of each vector's most similar other vector (cosine)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(axis=1)


def nn_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Share of inputs whose nearest other input (by cosine of embeddings) is the same as under the reference."""
    return float((nearest_neighbours(reference) == nearest_neighbours(candidate)).mean())


def sample_cosines(reference: list[np.ndarray], candidate: list[np.ndarray]) -> np.ndarray:
    """One cosine per sample, between its flattened reference and candidate outputs."""
    pairs = [
        (np.asarray(r, dtype=np.float64).ravel(), np.asarray(c, dtype=np.float64).ravel())
        for r, c in zip(reference, candidate)
    ]
    return np.array([float(r @ c / max(np.linalg.norm(r) * np.linalg.norm(c), 1e-12)) for r, c in pairs])


def fidelity(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict[str, float]:
    """cosine mean/min (one cosine per sample, over its flattened output), max/mean abs error and SQNR (dB),
    for per-sample outputs of any shape (pooled vectors, logits, per-token logits, start/end logits)."""
    ref = [np.asarray(r, dtype=np.float64).ravel() for r in reference]
    cand = [np.asarray(c, dtype=np.float64).ravel() for c in candidate]
    cos = sample_cosines(ref, cand)
    error = np.concatenate(cand) - np.concatenate(ref)
    noise, signal = float((error**2).sum()), float((np.concatenate(ref) ** 2).sum())
    return {
        "cosine_mean": _finite(cos.mean(), 6),
        "cosine_min": _finite(cos.min(), 6),
        "max_abs_error": _finite(np.abs(error).max(), 6),
        "mean_abs_error": _finite(np.abs(error).mean(), 6),
        "sqnr_db": _finite(10 * np.log10(signal / noise), 2) if noise > 0 else EXACT,
    }


def compare(reference: np.ndarray, candidate: np.ndarray, classification: bool = False) -> dict[str, float]:
    """cosine mean/min, max/mean abs error and SQNR (dB); top-1 agreement for classification logits,
    nearest-neighbour agreement for embeddings (when there are at least 3)."""
    cos = cosines(reference, candidate)
    error = candidate.astype(np.float64) - reference.astype(np.float64)
    noise = float((error**2).sum())
    signal = float((reference.astype(np.float64) ** 2).sum())
    metrics = {
        "cosine_mean": _finite(cos.mean(), 6),
        "cosine_min": _finite(cos.min(), 6),
        "max_abs_error": _finite(np.abs(error).max(), 6),
        "mean_abs_error": _finite(np.abs(error).mean(), 6),
        "sqnr_db": _finite(10 * np.log10(signal / noise), 2) if noise > 0 else EXACT,
    }
    if classification:
        agree = reference.argmax(axis=-1) == candidate.argmax(axis=-1)
        metrics["top1_agreement"] = round(float(agree.mean()), 6)
    elif len(reference) >= 3 and np.isfinite(candidate).all():
        metrics["nn_agreement"] = round(nn_agreement(reference, candidate), 6)
    return metrics


def _finite(value, digits: int) -> float | None:
    """A rounded float, or None for NaN/inf (a model that outputs NaN); None never passes a threshold."""
    value = float(value)
    return round(value, digits) if np.isfinite(value) else None
