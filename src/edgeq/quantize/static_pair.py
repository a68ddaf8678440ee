"""A static decoder pair (export.decoder: static) quantized as one model: the prefill graph is calibrated, and the
decode graph, which computes the same tensors one token at a time, takes the prefill's encodings tensor by tensor.
So both graphs hold the same quantized weights and the same activation scales, as an NPU's pipeline loads them
(one set of encodings for the prefill and the decode context)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeq.static_decoder import DECODE_FILE, KVShape, static_decoder

# a tensor's encodings, and those of a type convert onnxruntime's QNN quantizer inserts (8 <-> 16 bits)
ENCODING_SUFFIXES = ("_scale", "_zero_point", "_scale_convert", "_zero_point_convert")


def quantize_decode_graph(source: Path, folder: Path, quantize, prefill_feeds: list[dict]) -> dict:
    """Quantize source/decode.onnx into folder/decode.onnx with `quantize(fp32_path, out_path, feeds)` (the
    prefill's own settings), then give it the quantized prefill's (folder/model.onnx) encodings; returns counts."""
    shape = static_decoder(source)
    feeds = [_first_token(feed, shape) for feed in prefill_feeds[:8]]
    quantize(source / DECODE_FILE, folder / DECODE_FILE, feeds)
    prefill = onnx.load(str(folder / "model.onnx"))
    cache_inputs = cache_takes_written_encodings(prefill)
    onnx.save(prefill, str(folder / "model.onnx"))
    decode = onnx.load(str(folder / DECODE_FILE))
    shared, own = share_encodings(decode, prefill)
    onnx.save(decode, str(folder / DECODE_FILE))
    return {
        "encodings_from_prefill": shared,
        "encodings_of_its_own": own,
        "cache_inputs_encoded_as_written": cache_inputs,
    }


def cache_takes_written_encodings(model: onnx.ModelProto) -> int:
    """Every cache input (past_key.i, past_value.i) given the scale and zero point of the entries written into it
    (present_key.i, present_value.i); returns how many. Calibration runs the prefill on an empty cache, so a cache
    input's own range is zero (a scale of 1e-9 that would crush every cached key to nothing in the decode graph);
    what the host feeds back is exactly what the graphs wrote."""
    encodings = {t.name: t for t in model.graph.initializer if t.name.endswith(ENCODING_SUFFIXES)}
    changed = 0
    for name in list(encodings):
        if not name.startswith("past_"):
            continue
        written = encodings.get(name.replace("past_", "present_", 1))
        if written is None:
            continue
        encodings[name].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(written), name))
        changed += name.endswith("_scale")
    return changed


def share_encodings(decode: onnx.ModelProto, prefill: onnx.ModelProto) -> tuple[int, int]:
    """Every scale and zero point of `decode` set to the prefill's of the same name, and every quantized weight
    (a DequantizeLinear's initializer input) to the prefill's codes (GPTQ rounds them on the prefill's tokens);
    returns (shared, left) counts of encodings."""
    weights = {n.input[0] for n in decode.graph.node if n.op_type == "DequantizeLinear"}
    theirs = {t.name: t for t in prefill.graph.initializer if t.name.endswith(ENCODING_SUFFIXES) or t.name in weights}
    shared = left = 0
    for tensor in decode.graph.initializer:
        encoding = tensor.name.endswith(ENCODING_SUFFIXES)
        if not encoding and tensor.name not in weights:
            continue
        if not _take(tensor, theirs.get(tensor.name)):  # the same name: the prefill's tensor as stored (4-bit packed)
            left += encoding
            continue
        shared += encoding
    return shared, left


def _take(tensor: onnx.TensorProto | None, other: onnx.TensorProto | None) -> bool:
    """`tensor` made `other` where both are the same kind of tensor (shape and type); returns whether it was."""
    if tensor is None or other is None or list(other.dims) != list(tensor.dims) or other.data_type != tensor.data_type:
        return False
    tensor.CopyFrom(other)
    return True


def share_weights(model_path: Path, source_path: Path) -> int:
    """The quantized weights of the model at `model_path` replaced by `source_path`'s of the same name, in place:
    every initializer a weight's DequantizeLinear reads (codes, scale, zero point; a 4-bit weight's low-power block
    scales), not a bias's (its scale is its activation's times its weight's). Returns how many were replaced. So a
    model quantized again (other activation types, the decode graph) keeps the codes chosen once (GPTQ's, the 4-bit
    search's)."""
    model, source = onnx.load(str(model_path)), onnx.load(str(source_path), load_external_data=False)
    theirs = {t.name: t for t in source.graph.initializer}
    ours = {t.name: t for t in model.graph.initializer}
    replaced = 0
    for node in model.graph.node:
        codes = ours.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if codes is None or codes.data_type == onnx.TensorProto.INT32:
            continue
        replaced += sum(_take(ours.get(name), theirs.get(name)) for name in node.input)
    onnx.save(model, str(model_path))
    return replaced


def _first_token(feed: dict, shape: KVShape) -> dict:
    """A decode step from a prefill feed: its first token at position 0, an empty cache."""
    cache = shape.cache
    step = {
        "input_ids": feed["input_ids"][:, :1],
        "position_ids": np.zeros((1, 1), np.int32),
        "attention_mask": np.concatenate(
            [feed["attention_mask"][:, :, :1, :cache], feed["attention_mask"][:, :, :1, cache : cache + 1]], axis=3
        ),
    }
    return {**step, **{k: v for k, v in feed.items() if k.startswith("past_")}}
