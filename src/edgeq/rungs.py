"""The precisions a part of a model can take (rungs), each declared once: what it means in words, whether it needs
activation statistics, whether an embedding table at it is stored as INT8 rows, and whether its activation scale is
taken at run time over the whole batch. The recipe schema's `mixed_precision.candidates`, the islands, the search
and the report read this registry."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rung:
    name: str
    meaning: str
    needs_statistics: bool = False  # built from calibration activations (ranges, SmoothQuant, importance, Hessian)
    int8_rows: bool = False  # an embedding table at this rung is INT8 rows
    batch_dependent: bool = False  # activation scale taken at run time over the whole input tensor (the batch's)
    kind: str = "island"  # island: one weight-bearing node; activation: a block's activation type (QNN's QDQ)


# The element types of a quantized tensor a recipe and a device profile may name.
ACTIVATION_TYPES = ("uint8", "int8", "uint16", "int16")
WEIGHT_TYPES = ("int8", "uint8")

# Cheapest first: the order of promotion when costs tie.
RUNGS = (
    Rung("int4", "4-bit weights (round to nearest, blocks of 32)"),
    Rung("int4a", "4-bit weights with importance-weighted block ranges", needs_statistics=True),
    Rung(
        "int4g",
        "4-bit weights by GPTQ (rounding errors compensated through the input's Hessian)",
        needs_statistics=True,
    ),
    Rung("int4o", "4-bit weights with a float offset per block (w = d*q + m, llama.cpp's Q4_1 form)"),
    Rung("int8b", "8-bit weights in blocks of 32 (MatMulNBits)", int8_rows=True),
    Rung("xint8", "static INT8 with power-of-two scales, on the DPU", needs_statistics=True),
    Rung(
        "sint8", "static INT8 (activation scale fixed from calibration tokens)", needs_statistics=True, int8_rows=True
    ),
    Rung(
        "sint8u", "static INT8 with uint8 weights (exact u8 x u8 accumulation)", needs_statistics=True, int8_rows=True
    ),
    Rung(
        "int8", "dynamic INT8 (INT8 weights, activations quantized at run time)", int8_rows=True, batch_dependent=True
    ),
    Rung(
        "int8s",
        "dynamic INT8 with SmoothQuant (activation outliers moved into the weights)",
        needs_statistics=True,
        int8_rows=True,
        batch_dependent=True,
    ),
    Rung("w8", "INT8 weights with FP32 compute (no activation quantization)", int8_rows=True),
    Rung("fp16", "FP16 weights (FP32 compute)"),
    Rung("fp32", "FP32"),
    Rung("a8w8", "8-bit activations", kind="activation"),
    Rung("a16w8", "16-bit activations", kind="activation"),
)
RUNG_NAMES = tuple(r.name for r in RUNGS)
BY_NAME = {r.name: r for r in RUNGS}


def names(kind: str = "island", **traits: bool) -> tuple[str, ...]:
    """The rungs of `kind` that have every trait given (e.g. names(needs_statistics=True)), cheapest first."""
    return tuple(r.name for r in RUNGS if r.kind == kind and all(getattr(r, k) == v for k, v in traits.items()))
