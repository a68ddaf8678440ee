"""quantization.four_bit_weights: chosen MatMul weights of a static QDQ model at 4 bits, in DequantizeLinear's
blocked form (opset 21): signed codes in [-8, 7], no zero point, one float scale per 32 input rows and output
column. onnxruntime-qnn's HTP backend takes that DequantizeLinear → MatMul beside 16-bit activations (measured on
the emulator with CPU fallback disabled), and the CPU EP simulates it exactly. The codes come from GPTQ on the
calibration tokens (`weight_rounding: gptq`; each block's scale is its largest weight's, clipped by the factor that
rounds the block with the least Hessian-weighted error: on SmolLM2's gate and up projections that cut the held-out
KL from 0.066 to 0.043, README) or round to nearest; the rest of the model keeps its 8-bit weights."""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeq.errors import RecipeError
from edgeq.progress import track
from edgeq.quantize.gptq_rounding import input_hessians, matmul_roundings
from edgeq.quantize.numerics import (
    INT4_BLOCK,
    block_gptq,
    block_nearest,
    block_scale_grid,
    dequantize_blocks,
    output_energy,
)

if TYPE_CHECKING:
    from edgeq.quantize.four_bit_budget import Budget

BLOCKED_OPSET = 21  # DequantizeLinear's block_size attribute and the INT4 type


def four_bit_weights(
    fp32_path: Path,
    qdq_path: Path,
    patterns: list[str],
    feeds: list[dict],
    gptq: bool,
    budget: Budget | None = None,
    scales: str = "float",
) -> dict:
    """Rewrite qdq_path's MatMuls whose node name matches one of `patterns` (shell-style) to 4-bit block weights;
    with a `budget`, every quantized MatMul is a candidate and the search (four_bit_budget) chooses which.
    `scales`: `float` (a float32 scale a block) or `uint8` (the HTP's low-power form: uint8 multiples of a float
    step a column).
    Hessians of each MatMul's input come from the FP32 model (fp32_path, whose node names the QDQ model keeps) on
    the calibration feeds: GPTQ's, and the output error the report gives. Returns what the report says."""
    model = onnx.load(str(qdq_path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    key = "four_bit_budget" if budget else "four_bit_weights"
    if opset < BLOCKED_OPSET:
        raise RecipeError(
            f"quantization.{key}: the model is opset {opset}; 4-bit block weights need opset "
            f"{BLOCKED_OPSET} (DequantizeLinear's block_size)",
            f"Set export.opset: {BLOCKED_OPSET}",
        )
    fp32 = onnx.load(str(fp32_path))
    jobs = [j for j in matmul_roundings(fp32, model) if any(fnmatch.fnmatchcase(j.node, p) for p in patterns)]
    if not jobs:
        raise RecipeError(
            f"quantization.{key}: {patterns} match no quantized MatMul with a weight",
            "Give MatMul node names or shell-style patterns such as `*/mlp/gate_proj/MatMul`",
        )
    shared = _shared(model, fp32, jobs)
    if shared and not budget:
        raise RecipeError(
            f"quantization.four_bit_weights: {shared[0]}'s quantized weight is read by another node too (a tied "
            "table?), which would change with it",
            "Leave that MatMul out of the patterns",
        )
    jobs = [j for j in jobs if j.node not in shared]
    tensors = {t.name: t for t in model.graph.initializer}
    sizes = {j.node: WeightBytes.of(j, tensors, scales) for j in jobs}
    if budget:
        budget.check_reachable(sizes)
    hessians, tokens = input_hessians(fp32, sorted({j.activation for j in jobs}), feeds)
    weights = {t.name: t for t in fp32.graph.initializer}
    rounding = "gptq clip" if gptq else "nearest"
    codes, steps, errors = {}, {}, {}
    for job in track(jobs, "4-bit block weights", total=len(jobs)):
        weight = numpy_helper.to_array(weights[job.weight]).astype(np.float64)
        hessian = hessians[job.activation]
        steps[job.node] = block_scale_grid(weight) if scales == "uint8" else None
        codes[job.node] = four_bit_codes(weight, hessian, rounding, steps[job.node])
        errors[job.node] = (
            output_energy(dequantize_blocks(*codes[job.node]) - weight, hessian),
            output_energy(weight, hessian),
        )
    search = None
    if budget:
        from edgeq.quantize.four_bit_budget import choose_four_bit

        chosen, search = choose_four_bit(fp32, jobs, codes, sizes, budget)
        jobs = [j for j in jobs if j.node in chosen]
    error = sum(errors[j.node][0] for j in jobs)
    energy = sum(errors[j.node][1] for j in jobs)
    dequantizers = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    matmuls = {n.name: n for n in model.graph.node}
    for job in jobs:
        block_codes, block_scales = codes[job.node]
        tensors[job.codes].CopyFrom(int4_tensor(job.codes, block_codes))
        dequantize = dequantizers[matmuls[job.node].input[1]]
        if scales == "uint8":
            tensors[job.scale].CopyFrom(numpy_helper.from_array(steps[job.node], job.scale))
            model.graph.initializer.extend(_low_power_scales(model, dequantize, job, block_scales, steps[job.node]))
        else:
            tensors[job.scale].CopyFrom(numpy_helper.from_array(block_scales, job.scale))
            _to_blocked(dequantize)
    _drop_unused(model)
    del fp32, weights
    onnx.save(model, str(qdq_path))
    done = {
        "matmuls": [j.node for j in jobs],
        "codes": "int4, symmetric [-8, 7], no zero point",
        "block_size": INT4_BLOCK,
        "scales": "1 to 16 times a float32 step a column, stored as uint8 (the HTP's low-power block form, LPBQ)"
        if scales == "uint8"
        else "float32, one a block",
        "method": "GPTQ (damping 0.01), each block's scale clipped for least Hessian-weighted rounding error"
        if gptq
        else "round to nearest",
        "calibration_tokens": tokens,
        "relative_output_error": round(error / energy, 6) if energy else None,
        "reason": "named by the recipe (quantization.four_bit_weights)",
    }
    if search:
        done["reason"] = search.pop("reason")
        done["search"] = search
    return done


def _shared(model: onnx.ModelProto, fp32: onnx.ModelProto, jobs: list) -> list[str]:
    """The MatMuls whose quantized codes or scale, or FP32 weight, another node reads too (a tied table)."""
    readers = Counter(name for node in model.graph.node for name in node.input)
    float_readers = Counter(name for node in fp32.graph.node for name in node.input)
    return [j.node for j in jobs if readers[j.codes] > 1 or readers[j.scale] > 1 or float_readers[j.weight] > 1]


@dataclass(frozen=True)
class WeightBytes:
    """A MatMul weight's stored bytes at 8 bits (as the quantizer wrote it), in 4-bit blocks, and at FP16."""

    eight: float
    four: float
    fp16: float

    @classmethod
    def of(cls, job, tensors: dict, scales: str = "float") -> WeightBytes:
        rows, columns = tensors[job.codes].dims
        eight = sum(stored_bytes(tensors[name]) for name in (job.codes, job.scale, job.zero))
        blocks = -(-rows // INT4_BLOCK)
        # uint8: a byte a block scale and half a byte its zero point (the form wants one), a float step and a
        # zero point a column; float: four bytes a block scale
        per_block = 1.5 if scales == "uint8" else 4
        per_column = 5 if scales == "uint8" else 0
        four = rows * columns / 2 + blocks * columns * per_block + columns * per_column
        return cls(eight, four, 2.0 * rows * columns)


def stored_bytes(tensor: onnx.TensorProto) -> float:
    """An initializer's bytes as ONNX stores its type (4-bit types two a byte)."""
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return count / 2
    return count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def four_bit_codes(
    weight: np.ndarray, hessian: np.ndarray, rounding: str, steps: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A [K, N] weight's 4-bit block codes and scales by `rounding`: `nearest`, `gptq`, or `gptq clip` (GPTQ with
    each block's scale clipped for least Hessian-weighted rounding error, what a build uses); `steps`: the block
    scales on that per-column grid (block_scale_grid)."""
    if rounding == "nearest":
        return block_nearest(weight, steps=steps)
    return block_gptq(weight, hessian, clip=rounding == "gptq clip", steps=steps)


def _low_power_scales(
    model: onnx.ModelProto, dequantize: onnx.NodeProto, job, block_scales: np.ndarray, step: np.ndarray
) -> list[onnx.TensorProto]:
    """A weight's DequantizeLinear made the HTP's low-power block form (onnxruntime-qnn's LPBQ MatMul fusion):
    blocked on axis 0 with an INT4 zero point of zeros, its scale the output of a per-column DequantizeLinear of
    uint8 block scales (that node put before it), whose scale is job.scale (the caller's step). Returns the new
    initializers."""
    blocks, columns = block_scales.shape
    levels = np.round(block_scales / step).astype(np.uint8)
    names = {"levels": f"{job.scale}_blocks", "zero": f"{job.scale}_blocks_zero_point"}
    scale_output = f"{job.scale}_blocks_dequantized"
    node = helper.make_node(
        "DequantizeLinear", [names["levels"], job.scale, names["zero"]], [scale_output], axis=1, name=scale_output
    )
    model.graph.node.insert(list(model.graph.node).index(dequantize), node)
    zero_codes = np.zeros((blocks, columns), np.int8)
    del dequantize.input[1:]
    dequantize.input.extend([scale_output, f"{job.codes}_block_zero_point"])
    del dequantize.attribute[:]
    dequantize.attribute.extend([helper.make_attribute("axis", 0), helper.make_attribute("block_size", INT4_BLOCK)])
    return [
        numpy_helper.from_array(levels, names["levels"]),
        numpy_helper.from_array(np.zeros(columns, np.uint8), names["zero"]),
        int4_tensor(f"{job.codes}_block_zero_point", zero_codes),
    ]


def int4_tensor(name: str, codes: np.ndarray) -> onnx.TensorProto:
    """An INT4 initializer stored as ONNX packs it: two codes a byte in raw_data, the first in the low nibble (an
    unpacked list would be kept as one int32 per pair, more bytes than the 8-bit codes it replaces)."""
    nibbles = (codes.ravel().astype(np.int8) & 0x0F).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    packed = nibbles[0::2] | (nibbles[1::2] << 4)
    return helper.make_tensor(name, onnx.TensorProto.INT4, codes.shape, packed.tobytes(), raw=True)


def _to_blocked(dequantize: onnx.NodeProto) -> None:
    """A per-column DequantizeLinear of a [K, N] weight made the blocked form: axis 0, block_size, no zero point."""
    del dequantize.input[2:]
    del dequantize.attribute[:]
    dequantize.attribute.extend([helper.make_attribute("axis", 0), helper.make_attribute("block_size", INT4_BLOCK)])


def _drop_unused(model: onnx.ModelProto) -> None:
    """Initializers no node reads any more (the 4-bit weights' old zero points)."""
    read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    kept = [t for t in model.graph.initializer if t.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
