"""The node groups that compute one island in one precision. Each is a self-contained replacement (nodes and
initializers) for the island's node, so any assignment assembles in milliseconds.

  xint8   static INT8 for a DPU (Vitis AI XINT8): symmetric, per-tensor, power-of-two scales, Q/DQ around the
          MatMul; the activation exponent minimises MSE over the calibration activations. MatMul only.
  sint8   static INT8: the activation is quantized to uint8 with one scale fixed from calibration tokens (so
          a batch, its padding or a long text cannot move it), weights per-column symmetric INT8, integer
          GEMM (MatMulIntegerToFloat, or QAttention for a fused Attention). Where SmoothQuant helps (chosen per
          island by simulated SQNR), one Mul divides activation outliers out and the weights take them.
  sint8u  sint8 with the weights stored as uint8 (zero point 128): onnxruntime then uses its u8 x u8 kernels,
          which on x86 without VNNI accumulate exactly, where u8 x s8 (VPMADDUBSW) saturates pairs at 16 bits.
  int8    dynamic INT8: DynamicQuantizeMatMul (activation range taken at run time over the whole tensor);
          for a Gather, INT8 rows with one scale per row.
  int8s   dynamic INT8 with SmoothQuant; padded rows are zeroed first (a Mul by the attention mask), since the
          run-time range is taken over them too.
  w8      INT8 weights, FP32 compute: DequantizeLinear(per-channel) -> MatMul. MatMul only.
  fp32    the original node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeq.graph import MS_DOMAIN
from edgeq.mixed_precision.statistics import ActivationStats, best_alpha, smoothing_factors, static_range
from edgeq.quantize.numerics import (  # noqa: F401  (re-exported for callers of this module)
    INT4_BLOCK,
    blocks_along_k,
    int4_blocks,
    int4_gptq,
    pack_nibbles,
    pair_safe_int8,
    quantize_symmetric,
)

TOKEN_MASK = "edgeq_token_mask"  # [B, S, 1] float: 1 for real tokens, 0 for padding (made by assemble)


@dataclass
class Candidate:
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    size_bytes: int
    detail: dict | None = None  # what was chosen inside the candidate (e.g. the smoothing strength)
    tied_nodes: list[onnx.NodeProto] = field(default_factory=list)  # replace a tied embedding's lookup, in its place


def _base(node: onnx.NodeProto) -> str:
    return node.name.strip("/").replace("/", "_")


def _int8_weight(
    node: onnx.NodeProto,
    weight: np.ndarray,
    per_channel: bool,
    tag: str = "W",
    unsigned: bool = False,
    pair_safe: bool = False,
):
    """(initializer names, initializers, bytes) of a MatMul weight in INT8, one scale per output column; stored
    as uint8 with zero point 128 when `unsigned`; no pair of products saturating when `pair_safe`."""
    q, scale = quantize_symmetric(weight, axis=1, per_channel=per_channel, pair_safe=pair_safe and not unsigned)
    zero = np.zeros_like(scale, dtype=np.int8)
    if unsigned:
        q, zero = (q.astype(np.int16) + 128).astype(np.uint8), np.full_like(scale, 128, dtype=np.uint8)
    names = [f"{_base(node)}_{tag}_int8", f"{_base(node)}_{tag}_scale", f"{_base(node)}_{tag}_zp"]
    inits = [
        numpy_helper.from_array(q, names[0]),
        numpy_helper.from_array(scale, names[1]),
        numpy_helper.from_array(zero, names[2]),
    ]
    return names, inits, q.nbytes + scale.nbytes * 2


def _quantized_compute(
    node: onnx.NodeProto, quantized: str, scale: str, zero: str, weight_names: list[str], bias: str = ""
) -> onnx.NodeProto:
    """The integer node computing `node` from a uint8 activation with its scale and zero point."""
    w_q, w_scale, w_zero = weight_names
    if node.op_type == "MatMul":
        return helper.make_node(
            "MatMulIntegerToFloat",
            [quantized, w_q, scale, w_scale, zero, w_zero, *([bias] if bias else [])],
            list(node.output),
            name=node.name,
            domain=MS_DOMAIN,
        )
    mask = node.input[3] if len(node.input) > 3 else ""
    attention = helper.make_node(
        "QAttention",
        [quantized, w_q, node.input[2], scale, w_scale, mask, zero, w_zero],
        node.output[:1],
        name=node.name,
        domain=MS_DOMAIN,
    )
    attention.attribute.extend(a for a in node.attribute if a.name in ("num_heads", "unidirectional"))
    return attention


def _dynamic_compute(node: onnx.NodeProto, activation: str, weight_names: list[str]) -> list[onnx.NodeProto]:
    """DynamicQuantizeMatMul for a MatMul; DynamicQuantizeLinear + QAttention for a fused Attention."""
    if node.op_type == "MatMul":
        return [
            helper.make_node(
                "DynamicQuantizeMatMul",
                [activation, *weight_names],
                list(node.output),
                name=node.name,
                domain=MS_DOMAIN,
            )
        ]
    base = _base(node)
    q, scale, zero = f"{base}_input_q", f"{base}_input_scale", f"{base}_input_zp"
    quantize = helper.make_node(
        "DynamicQuantizeLinear", [activation], [q, scale, zero], name=f"{node.name}_quantize_input"
    )
    return [quantize, _quantized_compute(node, q, scale, zero, weight_names)]


def _smoothing_mul(node: onnx.NodeProto, smooth: np.ndarray, tag: str) -> tuple[onnx.NodeProto, onnx.TensorProto, str]:
    inverse, smoothed = f"{_base(node)}_{tag}_inverse_smooth", f"{_base(node)}_{tag}_smoothed_input"
    mul = helper.make_node("Mul", [node.input[0], inverse], [smoothed], name=f"{node.name}_{tag}_smooth")
    return mul, numpy_helper.from_array((1.0 / smooth).astype(np.float32), inverse), smoothed


def matmul_int8(node: onnx.NodeProto, weight: np.ndarray, per_channel: bool, pair_safe: bool = False) -> Candidate:
    names, inits, size = _int8_weight(node, weight, per_channel, pair_safe=pair_safe)
    return Candidate(_dynamic_compute(node, node.input[0], names), inits, size)


def matmul_smoothed(
    node: onnx.NodeProto,
    weight: np.ndarray,
    stats: ActivationStats,
    alpha: float,
    per_channel: bool,
    masked: bool,
    pair_safe: bool = False,
) -> Candidate:
    smooth = smoothing_factors(stats, weight, alpha)
    names, inits, size = _int8_weight(node, weight * smooth[:, None], per_channel, tag="Ws", pair_safe=pair_safe)
    mul, inverse, smoothed = _smoothing_mul(node, smooth, "s")
    nodes = [mul]
    if masked:  # the run-time range must not see padded rows
        real = f"{_base(node)}_s_real_tokens"
        nodes.append(helper.make_node("Mul", [smoothed, TOKEN_MASK], [real], name=f"{node.name}_s_mask_padding"))
        smoothed = real
    return Candidate(
        [*nodes, *_dynamic_compute(node, smoothed, names)],
        [*inits, inverse],
        size + smooth.nbytes,
        {"alpha": alpha, "masked": masked},
    )


def matmul_static(
    node: onnx.NodeProto,
    weight: np.ndarray,
    stats: ActivationStats,
    unsigned: bool = False,
    alpha: float | None = None,
    pair_safe: bool = False,
) -> Candidate:
    """sint8 (or sint8u): a fixed uint8 activation range from calibration tokens, per-column INT8 weights."""
    tag = "stu" if unsigned else "st"
    if alpha is None:
        alpha, _ = best_alpha(stats, weight)
    smooth = smoothing_factors(stats, weight, alpha)
    scale, zero = static_range(stats, smooth)
    names, inits, size = _int8_weight(
        node, weight * smooth[:, None], True, tag=f"W{tag}", unsigned=unsigned, pair_safe=pair_safe
    )
    base = f"{_base(node)}_{tag}"
    inits += [
        numpy_helper.from_array(np.array(scale, np.float32), f"{base}_x_scale"),
        numpy_helper.from_array(np.array(zero, np.uint8), f"{base}_x_zp"),
    ]
    nodes, source = [], node.input[0]
    if alpha > 0:
        mul, inverse, source = _smoothing_mul(node, smooth, tag)
        nodes.append(mul)
        inits.append(inverse)
        size += smooth.nbytes
    nodes.append(
        helper.make_node(
            "QuantizeLinear",
            [source, f"{base}_x_scale", f"{base}_x_zp"],
            [f"{base}_x_q"],
            name=f"{node.name}_{tag}_quantize_input",
        )
    )
    nodes.append(_quantized_compute(node, f"{base}_x_q", f"{base}_x_scale", f"{base}_x_zp", names))
    return Candidate(nodes, inits, size + 5, {"alpha": alpha, "x_scale": float(scale), "x_zero_point": int(zero)})


def matmul_xint8(node: onnx.NodeProto, weight: np.ndarray, samples: np.ndarray) -> Candidate:
    from edgeq.quantize.pow2 import QMAX, QMIN, best_exponent

    base = _base(node)
    w_exp, x_exp = best_exponent(weight), best_exponent(samples)
    w_q = np.clip(np.round(weight / 2.0**w_exp), QMIN, QMAX).astype(np.int8)
    names = {k: f"{base}_{k}" for k in ("W_xint8", "W_scale", "X_scale", "zero", "X_q", "X_dq", "W_dq")}
    inits = [
        numpy_helper.from_array(w_q, names["W_xint8"]),
        numpy_helper.from_array(np.float32(2.0**w_exp), names["W_scale"]),
        numpy_helper.from_array(np.float32(2.0**x_exp), names["X_scale"]),
        numpy_helper.from_array(np.int8(0), names["zero"]),
    ]
    nodes = [
        helper.make_node(
            "QuantizeLinear",
            [node.input[0], names["X_scale"], names["zero"]],
            [names["X_q"]],
            name=f"{node.name}_quantize_input",
        ),
        helper.make_node(
            "DequantizeLinear",
            [names["X_q"], names["X_scale"], names["zero"]],
            [names["X_dq"]],
            name=f"{node.name}_dequantize_input",
        ),
        helper.make_node(
            "DequantizeLinear",
            [names["W_xint8"], names["W_scale"], names["zero"]],
            [names["W_dq"]],
            name=f"{node.name}_dequantize_weight",
        ),
        helper.make_node("MatMul", [names["X_dq"], names["W_dq"]], list(node.output), name=node.name),
    ]
    return Candidate(nodes, inits, w_q.nbytes + 9)


def matmul_w8(node: onnx.NodeProto, weight: np.ndarray, per_channel: bool) -> Candidate:
    names, inits, size = _int8_weight(node, weight, per_channel)
    dequantized = f"{_base(node)}_W_dequantized"
    dq = helper.make_node("DequantizeLinear", names, [dequantized], name=f"{node.name}_dequantize_weight", axis=1)
    compute = onnx.NodeProto()
    compute.CopyFrom(node)  # the same MatMul or Attention, reading the dequantized weight
    compute.input[1] = dequantized
    return Candidate([dq, compute], inits, size)


def gather_int8(node: onnx.NodeProto, table: np.ndarray) -> Candidate:
    q, scale = quantize_symmetric(table, axis=0)
    base = _base(node)
    q_name, s_name = f"{base}_table_int8", f"{base}_row_scale"
    inits = [numpy_helper.from_array(q, q_name), numpy_helper.from_array(scale.reshape(-1, 1), s_name)]
    rows, row_scales, as_float = f"{base}_rows_int8", f"{base}_rows_scale", f"{base}_rows_float"
    nodes = [
        helper.make_node("Gather", [q_name, node.input[1]], [rows], name=node.name, axis=0),
        helper.make_node("Gather", [s_name, node.input[1]], [row_scales], name=f"{node.name}_scale", axis=0),
        helper.make_node("Cast", [rows], [as_float], name=f"{node.name}_cast", to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", [as_float, row_scales], list(node.output), name=f"{node.name}_dequantize"),
    ]
    return Candidate(nodes, inits, q.nbytes + scale.nbytes)


def token_mask_nodes(mask_input: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """TOKEN_MASK from the model's attention mask input: Cast to float, then a trailing axis."""
    as_float, axes = f"{TOKEN_MASK}_float", f"{TOKEN_MASK}_axes"
    nodes = [
        helper.make_node("Cast", [mask_input], [as_float], name=f"{TOKEN_MASK}_cast", to=onnx.TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [as_float, axes], [TOKEN_MASK], name=f"{TOKEN_MASK}_unsqueeze"),
    ]
    return nodes, [numpy_helper.from_array(np.array([-1], dtype=np.int64), axes)]


# ----------------------------------------------------------------------------------------- language models
def matmul_int4(
    node: onnx.NodeProto,
    weight: np.ndarray,
    importance: np.ndarray | None = None,
    tag: str = "q4",
    samples: np.ndarray | None = None,
    accuracy_level: int = 0,
) -> Candidate:
    """MatMulNBits with 4-bit weights in blocks of 32 along K (FP32 activations; onnxruntime's CPU kernels):
    round to nearest, importance-weighted ranges, or (with calibration `samples` of the input) GPTQ."""
    rows, cols = weight.shape
    codes, scale, zero = int4_gptq(weight, samples) if samples is not None else int4_blocks(weight, importance)
    base = f"{_base(node)}_{tag}"
    inits = [
        numpy_helper.from_array(pack_nibbles(codes), f"{base}_B"),
        numpy_helper.from_array(scale.reshape(-1), f"{base}_scales"),
        numpy_helper.from_array(pack_nibbles(zero).reshape(-1), f"{base}_zero_points"),
    ]
    matmul = _matmul_nbits(node, inits, list(node.output), rows, cols, 4, accuracy_level)
    size = sum(numpy_helper.to_array(t).nbytes for t in inits)
    method = (
        "GPTQ"
        if samples is not None
        else "importance-weighted ranges"
        if importance is not None
        else "round to nearest"
    )
    return Candidate([matmul], inits, size, {"bits": 4, "block_size": INT4_BLOCK, "method": method})


def matmul_int4_offset(node: onnx.NodeProto, weight: np.ndarray, accuracy_level: int = 0) -> Candidate:
    """4-bit codes with a scale and a float offset per block of 32 along K, w = d·q + m (llama.cpp's Q4_1 form):
    the block's minimum and maximum are exact, and weights that already lie on such a grid (a Q4_1 GGUF, dequantized)
    are reproduced exactly, where MatMulNBits' integer zero points move every one of them. onnxruntime's kernel for
    float zero points is ~30x slower, so the offset is applied outside it: x·W = MatMulNBits(x, q, d, zero 0) +
    (x summed per block)·M, one small MatMul by a block-indicator matrix shared by every island of the same K, and
    one of offsets, stored in FP16 as [N, K/32] (a tied embedding's lookup reads them by row; onnxruntime folds the
    Transpose and the Cast once, when the session loads)."""
    rows, cols = weight.shape
    w = blocks_along_k(weight, dtype=np.float64)  # [N, blocks, 32]
    blocks = w.shape[1]
    low, high = w.min(axis=2), w.max(axis=2)  # [N, blocks]
    offset = low.astype(np.float16).astype(np.float64)  # the stored offset, so the codes fit what is stored
    scale = np.where(high - offset == 0, 1.0, (high - offset) / 15.0).astype(np.float32)
    codes = np.clip(np.round((w - offset[..., None]) / scale[..., None]), 0, 15).astype(np.uint8)
    base = f"{_base(node)}_q4o"
    sums, indicator = f"{base}_block_sums", f"edgeq_block_indicator_k{rows}"
    inits = [
        numpy_helper.from_array(pack_nibbles(codes), f"{base}_B"),
        numpy_helper.from_array(scale.reshape(-1), f"{base}_scales"),
        numpy_helper.from_array(np.zeros(cols * -(-blocks // 2), np.uint8), f"{base}_zero_points"),
        numpy_helper.from_array(offset.astype(np.float16), f"{base}_offsets"),
        numpy_helper.from_array(
            (np.arange(rows)[:, None] // INT4_BLOCK == np.arange(blocks)).astype(np.float32), indicator
        ),
    ]
    nodes = [
        _matmul_nbits(node, inits[:3], [f"{base}_codes_out"], rows, cols, 4, accuracy_level),
        helper.make_node("MatMul", [node.input[0], indicator], [sums], name=f"{node.name}_block_sums"),
        helper.make_node(
            "Transpose", [f"{base}_offsets"], [f"{base}_offsets_by_block"], name=f"{node.name}_offsets_by_block"
        ),
        helper.make_node(
            "Cast",
            [f"{base}_offsets_by_block"],
            [f"{base}_offsets_fp32"],
            name=f"{node.name}_cast_offsets",
            to=onnx.TensorProto.FLOAT,
        ),
        helper.make_node("MatMul", [sums, f"{base}_offsets_fp32"], [f"{base}_offset_out"], name=f"{node.name}_offsets"),
        helper.make_node(
            "Add", [f"{base}_codes_out", f"{base}_offset_out"], list(node.output), name=f"{node.name}_add_offsets"
        ),
    ]
    size = sum(numpy_helper.to_array(t).nbytes for t in inits[:4])
    return Candidate(nodes, inits, size, {"bits": 4, "block_size": INT4_BLOCK, "method": "min/max with a float offset"})


def matmul_int8_blocks(node: onnx.NodeProto, weight: np.ndarray, accuracy_level: int = 0) -> Candidate:
    """MatMulNBits with 8-bit weights in blocks of 32 along K, symmetric (zero point 128): twice a 4-bit block's
    bytes, and on onnxruntime's CPU at accuracy_level 4 (INT8 dot products) as fast as 4-bit or faster, where INT8
    weights dequantized to FP32 (`w8`) are not."""
    rows, cols = weight.shape
    w = blocks_along_k(weight, dtype=np.float64)  # [N, blocks, 32]
    scale = np.abs(w).max(axis=2) / 127.0
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)  # [N, blocks]
    codes = (np.clip(np.round(w / scale[..., None]), -127, 127) + 128).astype(np.uint8)
    base = f"{_base(node)}_q8b"
    inits = [numpy_helper.from_array(codes, f"{base}_B"), numpy_helper.from_array(scale.reshape(-1), f"{base}_scales")]
    matmul = _matmul_nbits(node, inits, list(node.output), rows, cols, 8, accuracy_level)
    size = sum(numpy_helper.to_array(t).nbytes for t in inits)
    return Candidate([matmul], inits, size, {"bits": 8, "block_size": INT4_BLOCK, "method": "round to nearest"})


def _matmul_nbits(
    node: onnx.NodeProto, inits: list, outputs: list[str], rows: int, cols: int, bits: int, accuracy_level: int
) -> onnx.NodeProto:
    """onnxruntime's MatMulNBits in place of `node`: its input times the blocked weight whose codes, scales (and zero
    points) are `inits`, in blocks of INT4_BLOCK along K."""
    return helper.make_node(
        "MatMulNBits",
        [node.input[0], *(t.name for t in inits)],
        outputs,
        name=node.name,
        domain=MS_DOMAIN,
        K=rows,
        N=cols,
        bits=bits,
        block_size=INT4_BLOCK,
        accuracy_level=accuracy_level,
    )


SHAREABLE = {"int4", "int4a", "int4g", "int4o", "int8b"}  # MatMulNBits forms a tied embedding can gather from


def tied_lookup(gather: onnx.NodeProto, head: Candidate, rows: int, width: int) -> list[onnx.NodeProto]:
    """A tied embedding's lookup from the LM head's own quantized weights (one table in the file, as the builder's
    `shared_embeddings`): GatherBlockQuantized over the MatMulNBits codes and scales, read as [vocabulary, hidden]
    rows, plus the per-block float offsets of `int4o`. `head` is a MatMulNBits candidate of the [hidden, vocabulary]
    head weight; `rows` and `width` are the table's shape."""
    matmul = next(n for n in head.nodes if n.op_type == "MatMulNBits")
    bits = next(a.i for a in matmul.attribute if a.name == "bits")
    blocks = width // INT4_BLOCK
    _, codes, scales, *zero = [name for name in matmul.input if name]
    base = codes.removesuffix("_B")
    shapes = {f"{base}_table_shape": [rows, width * bits // 8], f"{base}_scales_shape": [rows, blocks]}
    if zero:
        shapes[f"{base}_zero_shape"] = [rows, -(-blocks // 2)]
    nodes = [
        helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(np.array(v, np.int64)))
        for name, v in shapes.items()
    ]
    nodes += [
        helper.make_node("Reshape", [codes, f"{base}_table_shape"], [f"{base}_table"], name=f"{gather.name}_table"),
        helper.make_node(
            "Reshape", [scales, f"{base}_scales_shape"], [f"{base}_table_scales"], name=f"{gather.name}_scales"
        ),
    ]
    inputs = [f"{base}_table", gather.input[1], f"{base}_table_scales"]
    if zero:
        nodes.append(
            helper.make_node(
                "Reshape", [zero[0], f"{base}_zero_shape"], [f"{base}_table_zero"], name=f"{gather.name}_zero"
            )
        )
        inputs.append(f"{base}_table_zero")
    offsets = next((t.name for t in head.initializers if t.name.endswith("_offsets")), None)
    looked_up = f"{base}_rows" if offsets else gather.output[0]
    nodes.append(
        helper.make_node(
            "GatherBlockQuantized",
            inputs,
            [looked_up],
            name=gather.name,
            domain=MS_DOMAIN,
            bits=bits,
            block_size=INT4_BLOCK,
            gather_axis=0,
            quantize_axis=1,
        )
    )
    return nodes + (_add_row_offsets(gather, offsets, looked_up, blocks, width) if offsets else [])


def _add_row_offsets(gather: onnx.NodeProto, offsets: str, rows: str, blocks: int, width: int) -> list[onnx.NodeProto]:
    """rows [.., width] + each row's per-block offsets [vocabulary, blocks] (FP16), broadcast over its block."""
    name = gather.name
    shapes = {f"{name}_by_block": [0, 0, blocks, INT4_BLOCK], f"{name}_by_row": [0, 0, width], f"{name}_last": [-1]}
    nodes = [
        helper.make_node("Constant", [], [k], name=k, value=numpy_helper.from_array(np.array(v, np.int64)))
        for k, v in shapes.items()
    ]
    return nodes + [
        helper.make_node("Gather", [offsets, gather.input[1]], [f"{name}_offsets16"], name=f"{name}_offsets", axis=0),
        helper.make_node(
            "Cast", [f"{name}_offsets16"], [f"{name}_offsets32"], name=f"{name}_cast_offsets", to=onnx.TensorProto.FLOAT
        ),
        helper.make_node(
            "Unsqueeze", [f"{name}_offsets32", f"{name}_last"], [f"{name}_offsets_b"], name=f"{name}_unsqueeze"
        ),
        helper.make_node("Reshape", [rows, f"{name}_by_block"], [f"{name}_blocks"], name=f"{name}_blocks"),
        helper.make_node(
            "Add", [f"{name}_blocks", f"{name}_offsets_b"], [f"{name}_shifted"], name=f"{name}_add_offsets"
        ),
        helper.make_node("Reshape", [f"{name}_shifted", f"{name}_by_row"], list(gather.output), name=f"{name}_rows"),
    ]


def matmul_fp16(node: onnx.NodeProto, weight: np.ndarray) -> Candidate:
    """Weights stored in FP16 (half the bytes), cast to FP32 for the MatMul (the CPU EP computes in FP32)."""
    name = f"{_base(node)}_W_fp16"
    cast = helper.make_node(
        "Cast", [name], [f"{name}_as_fp32"], name=f"{node.name}_cast_weight", to=onnx.TensorProto.FLOAT
    )
    compute = onnx.NodeProto()
    compute.CopyFrom(node)
    compute.input[1] = f"{name}_as_fp32"
    return Candidate([cast, compute], [numpy_helper.from_array(weight.astype(np.float16), name)], weight.size * 2)


def gather_int4(node: onnx.NodeProto, table: np.ndarray) -> Candidate:
    """GatherBlockQuantized: each row in 4-bit blocks of 32 (round to nearest), dequantized as it is gathered.
    The table's width must be a multiple of 32."""
    codes, scale, zero = int4_blocks(table.T)  # the table's rows play the weight's columns: blocks run along a row
    rows, blocks = scale.shape
    base = f"{_base(node)}_q4"
    data = helper.make_tensor(
        f"{base}_table",
        onnx.TensorProto.UINT4,
        list(table.shape),
        pack_nibbles(codes.reshape(rows, -1)).tobytes(),
        raw=True,
    )
    zeros = helper.make_tensor(
        f"{base}_zero_points", onnx.TensorProto.UINT4, [rows, blocks], pack_nibbles(zero).tobytes(), raw=True
    )
    scales = numpy_helper.from_array(scale, f"{base}_scales")
    gather = helper.make_node(
        "GatherBlockQuantized",
        [data.name, node.input[1], scales.name, zeros.name],
        list(node.output),
        name=node.name,
        domain=MS_DOMAIN,
        gather_axis=0,
        quantize_axis=1,
        block_size=INT4_BLOCK,
    )
    return Candidate(
        [gather],
        [data, scales, zeros],
        table.size // 2 + scale.nbytes + rows * ((blocks + 1) // 2),
        {"bits": 4, "block_size": INT4_BLOCK},
    )


def gather_fp16(node: onnx.NodeProto, table: np.ndarray) -> Candidate:
    name = f"{_base(node)}_table_fp16"
    gather = onnx.NodeProto()
    gather.CopyFrom(node)
    gather.input[0] = name
    gather.output[0] = f"{name}_rows"
    cast = helper.make_node(
        "Cast", [f"{name}_rows"], list(node.output), name=f"{node.name}_cast", to=onnx.TensorProto.FLOAT
    )
    return Candidate([gather, cast], [numpy_helper.from_array(table.astype(np.float16), name)], table.size * 2)
