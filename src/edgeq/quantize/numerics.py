"""Weight numerics, apart from any ONNX node: symmetric INT8 (per channel, and pair-safe for CPUs whose u8 x s8
kernels add adjacent products in saturating 16 bits), and 4-bit blocks (round to nearest, importance-weighted
ranges, GPTQ) with their nibble packing. The mixed-precision candidates, the weight-only quantizer and the
SmoothQuant strength search all use these."""

from __future__ import annotations

import numpy as np

INT4_BLOCK = 32


def quantize_symmetric(
    weight: np.ndarray, axis: int, per_channel: bool = True, pair_safe: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """INT8 symmetric, one scale per index of `axis` (or one for the whole tensor when not per_channel):
    returns (int8 values, float scales shaped [size of axis]). `pair_safe` (a 2-D MatMul weight, axis 1) keeps
    every adjacent pair of rows within |q[2j] + q[2j+1]| <= 128, see `pair_safe_int8`."""
    if pair_safe and weight.ndim == 2 and axis == 1:
        return pair_safe_int8(weight, per_channel)
    reduce_axes = tuple(i for i in range(weight.ndim) if i != axis)
    scale = np.abs(weight).max(axis=reduce_axes) / 127.0
    if not per_channel:
        scale = np.full_like(scale, scale.max())
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def pair_safe_int8(weight: np.ndarray, per_channel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """INT8 weights [K, N] that a u8 x s8 kernel without VNNI multiplies exactly.

    x86 without VNNI (AVX2, AVX-512F) multiplies u8 activations by s8 weights with VPMADDUBSW, which adds the
    products of adjacent inputs k = 2j, 2j+1 into a saturating int16. With activations up to 255 a pair overflows
    only when its two weights share a sign and |q[2j] + q[2j+1]| > 128 (opposite signs never reach 32767). So the
    column's scale covers max(|w| / 127, |w[2j] + w[2j+1]| / 128), and a pair that rounding pushes over is pulled
    back by one step. Measured on MiniLM (static INT8, AVX2): cosine 0.9966 -> 0.9983, at the same speed; plain
    7-bit weights (onnxruntime's reduce_range) give 0.9969."""
    rows = weight.shape[0]
    padded = np.vstack([weight, np.zeros((rows % 2, weight.shape[1]), weight.dtype)])
    pair = np.abs(padded[0::2] + padded[1::2]).max(axis=0)
    scale = np.maximum(np.abs(weight).max(axis=0) / 127.0, pair / 128.0)
    if not per_channel:
        scale = np.full_like(scale, scale.max())
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    q = np.clip(np.round(padded / scale), -127, 127).astype(np.int32)
    while True:
        excess = np.abs(q[0::2] + q[1::2]) > 128
        if not excess.any():
            break
        first_larger = np.abs(q[0::2]) >= np.abs(q[1::2])
        for offset, pick in ((0, excess & first_larger), (1, excess & ~first_larger)):
            q[offset::2][pick] -= np.sign(q[offset::2][pick])
    return q[:rows].astype(np.int8), scale


def blocks_along_k(weight: np.ndarray, block: int = INT4_BLOCK, dtype=np.float32) -> np.ndarray:
    """A MatMul weight [K, N] as [N, blocks, block] (MatMulNBits' layout), K padded with zeros to whole blocks."""
    rows, cols = weight.shape
    padded = np.zeros((-(-rows // block) * block, cols), dtype)
    padded[:rows] = weight
    return padded.T.reshape(cols, -1, block)


def int4_blocks(weight: np.ndarray, importance: np.ndarray | None = None, block: int = INT4_BLOCK):
    """4-bit block quantization of a MatMul weight [K, N] along K: (codes [N, blocks, block] in 0..15, scales
    [N, blocks], zero points [N, blocks]).

    Without `importance`: round-to-nearest, symmetric (zero point 8; the block's largest-magnitude weight maps to
    -8, so all 16 levels are used, as onnxruntime's and llama.cpp's Q4_0 do). With it (E[x²] per input
    channel, from calibration tokens): asymmetric, and each block's range is shrunk to the factor that minimises
    the importance-weighted error Σ h_k (w_k - ŵ_k)², as llama.cpp's k-quants do with an importance matrix."""
    rows = weight.shape[0]
    w = blocks_along_k(weight, block)
    blocks = w.shape[1]
    if importance is None:
        extreme = np.take_along_axis(w, np.abs(w).argmax(axis=2)[..., None], axis=2)[..., 0]
        scale = np.where(extreme == 0, 1.0, extreme / -8.0)
        codes = np.clip(np.round(w / scale[..., None]) + 8, 0, 15)
        return codes.astype(np.uint8), scale.astype(np.float32), np.full(scale.shape, 8, np.uint8)
    h = np.zeros(blocks * block, np.float32)
    h[:rows] = np.maximum(importance, 1e-8)
    h = h.reshape(1, blocks, block)
    codes, scale, zero = int4_blocks(weight, None, block)  # round to nearest is one of the choices
    rtn_error = (h * ((codes - zero[..., None].astype(np.float32)) * scale[..., None] - w) ** 2).sum(axis=2)
    best = [codes.astype(np.float32), scale, zero.astype(np.float32), rtn_error]
    for shrink in (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7):
        low, high = np.minimum(w.min(axis=2), 0) * shrink, np.maximum(w.max(axis=2), 0) * shrink
        scale = np.where(high - low == 0, 1.0, (high - low) / 15.0)
        zero = np.clip(np.round(-low / scale), 0, 15)
        codes = np.clip(np.round(w / scale[..., None]) + zero[..., None], 0, 15)
        error = (h * ((codes - zero[..., None]) * scale[..., None] - w) ** 2).sum(axis=2)
        better = error < best[3]
        best[0] = np.where(better[..., None], codes, best[0])
        best[1], best[2], best[3] = (
            np.where(better, scale, best[1]),
            np.where(better, zero, best[2]),
            np.minimum(error, best[3]),
        )
    return best[0].astype(np.uint8), best[1].astype(np.float32), best[2].astype(np.uint8)


def int4_gptq(weight: np.ndarray, rows: np.ndarray, block: int = INT4_BLOCK, damp: float = 0.01):
    """GPTQ (Frantar et al.): input dimensions quantized one at a time, each one's rounding error pushed onto the
    ones not yet quantized through the inverse Hessian of the layer's input (H = XᵀX over calibration tokens), so
    the output error, not the weight error, is what is minimised. Asymmetric 4-bit, one range per block of 32
    (taken from the weights as updated when the block starts). Same layout as int4_blocks."""
    k, n = weight.shape
    blocks = -(-k // block)
    w = np.zeros((blocks * block, n), np.float64)
    w[:k] = weight
    x = rows.astype(np.float64)
    h = np.zeros((blocks * block, blocks * block))
    h[:k, :k] = x.T @ x / max(len(x), 1)
    inverse, _ = _inverse_hessian_factor(h, damp)
    codes = np.zeros((n, blocks, block), np.uint8)
    scales, zeros = np.zeros((n, blocks), np.float32), np.zeros((n, blocks), np.uint8)
    for g in range(blocks):  # GPTQ's lazy batches: errors pushed within the block, then onto the rest at once
        start, end = g * block, (g + 1) * block
        group, errors = w[start:end].copy(), np.zeros((block, n))
        low, high = np.minimum(group.min(axis=0), 0), np.maximum(group.max(axis=0), 0)
        scale = np.where(high - low == 0, 1.0, (high - low) / 15.0)
        zero = np.clip(np.round(-low / scale), 0, 15)
        scales[:, g], zeros[:, g] = scale, zero
        for i in range(block):
            q = np.clip(np.round(group[i] / scale) + zero, 0, 15)
            codes[:, g, i] = q
            errors[i] = (group[i] - (q - zero) * scale) / inverse[start + i, start + i]
            group[i + 1 :] -= np.outer(inverse[start + i, start + i + 1 : end], errors[i])
        w[end:] -= inverse[start:end, end:].T @ errors
    return codes, scales, zeros


def column_gptq(
    weight: np.ndarray,
    hessian: np.ndarray,
    scale: np.ndarray,
    zero: np.ndarray,
    levels: tuple[int, int],
    damp: float = 0.01,
    batch: int = 128,
) -> np.ndarray:
    """GPTQ on a fixed grid: a MatMul weight [K, N] with one scale and zero point per output column (as the quantizer
    chose them), its codes chosen input dimension by input dimension, each rounding error pushed onto the dimensions
    not yet rounded through the inverse of the input's Hessian (H = E[xxᵀ] over calibration tokens), so that the
    layer's output error, not the weight error, is what is minimised. `levels`: the integer type's (low, high).
    Returns the codes [K, N] in the zero point's dtype."""
    k, n = weight.shape
    w = weight.astype(np.float64).copy()
    inverse, dead = _inverse_hessian_factor(hessian, damp)
    w[dead] = 0.0
    s, z = scale.astype(np.float64), zero.astype(np.float64)
    codes = np.zeros((k, n), zero.dtype)
    for start in range(0, k, batch):  # GPTQ's lazy batches: errors pushed within the batch, then onto the rest
        end = min(start + batch, k)
        group, errors = w[start:end].copy(), np.zeros((end - start, n))
        for i in range(end - start):
            q = np.clip(np.round(group[i] / s) + z, *levels)
            codes[start + i] = q
            errors[i] = (group[i] - (q - z) * s) / inverse[start + i, start + i]
            group[i + 1 :] -= np.outer(inverse[start + i, start + i + 1 : end], errors[i])
        w[end:] -= inverse[start:end, end:].T @ errors
    return codes


def block_gptq(
    weight: np.ndarray,
    hessian: np.ndarray,
    block: int = INT4_BLOCK,
    levels: tuple[int, int] = (-8, 7),
    damp: float = 0.01,
    clip: bool = False,
    steps: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ into the HTP's 4-bit block form: a MatMul weight [K, N], symmetric codes in `levels`, one scale per
    block of `block` input rows and output column (DequantizeLinear's blocked form, axis 0), each block's scale
    taken from the weights as GPTQ has updated them when the block starts (`clip`: the block's largest magnitude
    times the factor in CLIP_FACTORS whose rounding error, weighted by the Hessian's diagonal, is least). `steps`
    ([N]): each block's scale is then an integer multiple of its column's step (block_scale_grid), in 1..BLOCK_SCALE_LEVELS (16).
    Returns (codes [K, N] int8, scales [ceil(K / block), N] float32)."""
    k, n = weight.shape
    w = weight.astype(np.float64).copy()
    inverse, dead = _inverse_hessian_factor(hessian, damp)
    w[dead] = 0.0
    codes = np.zeros((k, n), np.int8)
    scales = np.zeros((-(-k // block), n), np.float32)
    for g, start in enumerate(range(0, k, block)):
        end = min(start + block, k)
        group, errors = w[start:end].copy(), np.zeros((end - start, n))
        scale = np.abs(group).max(axis=0) / levels[1]
        if clip:
            scale = _least_error_scale(group, scale, np.diag(hessian)[start:end], levels)
        scale = on_scale_grid(scale, steps)
        scales[g] = scale
        for i in range(end - start):
            q = np.clip(np.round(group[i] / scale), *levels)
            codes[start + i] = q
            errors[i] = (group[i] - q * scale) / inverse[start + i, start + i]
            group[i + 1 :] -= np.outer(inverse[start + i, start + i + 1 : end], errors[i])
        w[end:] -= inverse[start:end, end:].T @ errors
    return codes, scales


def block_nearest(
    weight: np.ndarray, block: int = INT4_BLOCK, levels: tuple[int, int] = (-8, 7), steps: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Round to nearest into the same 4-bit block form as block_gptq: (codes [K, N] int8, scales [ceil(K / block),
    N] float32), each scale the block's largest magnitude over `levels[1]` (on the `steps` grid, if given)."""
    scales = on_scale_grid(_block_maxima(weight, block) / levels[1], steps)
    k = len(weight)
    codes = np.clip(np.round(weight / np.repeat(scales, block, axis=0)[:k]), *levels)
    return codes.astype(np.int8), scales.astype(np.float32)


def block_scale_grid(weight: np.ndarray, block: int = INT4_BLOCK, levels: tuple[int, int] = (-8, 7)) -> np.ndarray:
    """The per-column step of the HTP's low-power block form (LPBQ): block scales stored as multiples of one float
    step a column, the largest block's scale (round to nearest's) at BLOCK_SCALE_LEVELS steps."""
    steps = _block_maxima(weight, block).max(axis=0) / levels[1] / BLOCK_SCALE_LEVELS
    return np.where(steps == 0, 1.0, steps).astype(np.float32)


def on_scale_grid(scale: np.ndarray, steps: np.ndarray | None) -> np.ndarray:
    """Block scales (one a column) as used: zero ones made 1; with `steps`, the nearest multiple in
    1..BLOCK_SCALE_LEVELS."""
    if steps is None:
        return np.where(scale == 0, 1.0, scale)
    return np.clip(np.round(scale / steps), 1, BLOCK_SCALE_LEVELS) * steps.astype(np.float64)


def _block_maxima(weight: np.ndarray, block: int) -> np.ndarray:
    """Each block's largest magnitude, [ceil(K / block), N]."""
    k, n = weight.shape
    padded = np.zeros((-(-k // block) * block, n))
    padded[:k] = weight
    return np.abs(padded.reshape(-1, block, n)).max(axis=1)


def dequantize_blocks(codes: np.ndarray, scales: np.ndarray, block: int = INT4_BLOCK) -> np.ndarray:
    """What DequantizeLinear's blocked form (axis 0, no zero point) computes from block_gptq's or block_nearest's
    codes and scales."""
    return codes * np.repeat(scales.astype(np.float64), block, axis=0)[: len(codes)]


CLIP_FACTORS = np.linspace(1.0, 0.7, 7)
# The HTP's low-power block form takes block scales of 1..16 steps (4-bit, stored as uint8): onnxruntime-qnn 2.7's
# emulator computes a MatMul exactly with block scales up to 16 and wrongly from 17 (measured on one MatMul; SmolLM2
# with scales up to 255 gave top-1 0.018 on the emulated HTP, 0.90 in the CPU EP's simulation).
BLOCK_SCALE_LEVELS = 16


def _least_error_scale(group: np.ndarray, scale: np.ndarray, importance: np.ndarray, levels) -> np.ndarray:
    """Per column, the scale among `scale` × CLIP_FACTORS whose round-to-nearest error Σ_i h_ii (w_i − ŵ_i)² over
    the block's rows is least: clipping the largest weight a little buys finer steps for the rest."""
    trials = scale[None, :] * CLIP_FACTORS[:, None]  # [factors, N]
    safe = np.where(trials == 0, 1.0, trials)
    rounded = np.clip(np.round(group[None] / safe[:, None]), *levels) * safe[:, None]
    errors = np.einsum("fkn,k->fn", (group[None] - rounded) ** 2, importance)
    return trials[np.argmin(errors, axis=0), np.arange(group.shape[1])]


def _inverse_hessian_factor(hessian: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ's upper Cholesky factor of the damped H⁻¹, and the input channels that are always zero (their weights
    do not matter)."""
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h += np.eye(len(h)) * damp * np.mean(np.diag(h))
    return np.linalg.cholesky(np.linalg.inv(h)).T, dead


def output_error(weight: np.ndarray, codes: np.ndarray, scale: np.ndarray, zero: np.ndarray, hessian: np.ndarray):
    """E‖x(W - Ŵ)‖² for inputs with second moment `hessian`, of per-column (or per-tensor) codes."""
    return output_energy(
        (codes.astype(np.float64) - zero.astype(np.float64)) * scale.astype(np.float64) - weight, hessian
    )


def output_energy(matrix: np.ndarray, hessian: np.ndarray) -> float:
    """E‖xM‖² for inputs with second moment `hessian`: trace(Mᵀ H M). Of a weight: its output's energy; of a
    weight's rounding error ΔW: the output error."""
    return float(np.sum(matrix * (hessian @ matrix)))


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Two 4-bit values a byte along the last axis, the first in the low nibble (MatMulNBits' layout)."""
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros((*values.shape[:-1], 1), values.dtype)], axis=-1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)
