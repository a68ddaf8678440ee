"""What a language model's decode can reach on a device whose latency cannot be measured here (an NPU behind its
emulator): a token reads every weight once and the whole KV cache, so at best tokens/s = bandwidth / bytes a token
moves. An estimate, labelled so: it leaves out compute, the cache's write and the activations."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import numpy_helper

from edgeq.static_decoder import DECODE_FILE, static_decoder


def decode_roofline(folder: Path, bandwidth_gbps: float) -> dict:
    """The roofline of the static pair in `folder` (its decode graph) at `bandwidth_gbps`."""
    model = onnx.load(str(Path(folder) / DECODE_FILE))
    weights = _weight_bytes_per_token(model)
    kv = _cache_bytes(model, static_decoder(folder).cache)
    moved = weights + kv
    return {
        "estimate": True,
        "bytes_per_token": int(moved),
        "weight_bytes_per_token": int(weights),
        "kv_cache_bytes_per_token": int(kv),
        "memory_bandwidth_gbps": bandwidth_gbps,
        "tokens_per_s": round(bandwidth_gbps * 1e9 / moved, 1),
        "note": "a memory-bound roofline: every weight and the whole KV cache read once a token at the device's "
        "peak bandwidth; not measured (the emulator cannot time the NPU)",
    }


PACKED_4BIT = (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)


def _weight_bytes_per_token(model: onnx.ModelProto) -> float:
    """Bytes of every stored weight, but of a lookup table (a Gather's) only the row a token reads."""
    tables = {n.input[0] for n in model.graph.node if n.op_type == "Gather"}
    readers = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    total = 0.0
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        read_by_gather = tensor.name in tables or any(
            r.op_type == "DequantizeLinear" and r.output[0] in tables for r in readers.get(tensor.name, [])
        )
        stored = array.size / 2 if tensor.data_type in PACKED_4BIT else array.nbytes  # two 4-bit codes a byte
        total += stored / array.shape[0] if read_by_gather and array.ndim == 2 else stored
    return total


def _cache_bytes(model: onnx.ModelProto, length: int) -> float:
    """The KV cache a decode step reads: every past input, at the integer width its QuantizeLinear stores."""
    width = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0].startswith("past_"):
            zero = next((t for t in model.graph.initializer if t.name == node.input[2]), None)
            width[node.input[0]] = numpy_helper.to_array(zero).itemsize if zero is not None else 4
    total = 0.0
    for value in model.graph.input:
        if value.name.startswith("past_"):
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
            count = 1
            for d in dims:
                count *= d
            total += count * width.get(value.name, 4)
    return total
