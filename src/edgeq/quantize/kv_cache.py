"""An INT8 KV cache for a fused decoder graph: onnxruntime's GroupQueryAttention stores the keys and values it caches
as INT8 (symmetric, one static scale per channel of a head) and dequantizes them in its attention GEMMs; the CPU
kernels have it since onnxruntime 1.22 (`k_quant_type`/`v_quant_type` PER_CHANNEL, `kv_cache_bit_width` 8, the
scales as the op's `k_scale`/`v_scale` inputs). The cache then takes a quarter of FP32's bytes (`edgeq plan
--kv-dtype int8`).

Scales are calibrated: the FP32 model runs the calibration texts, and each layer's cached keys (after the rotary
embedding, as the cache holds them) and values give, per channel (kv head x head dim), their largest magnitude /
127. A prefill through the quantized cache attends over the dequantized keys and values, so validation measures
what the INT8 cache costs in KL and top-1 on the real kernel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.errors import ModelError

ATTENTION = "GroupQueryAttention"
K_SCALE_INPUT, V_SCALE_INPUT = 12, 13  # GroupQueryAttention's k_scale and v_scale input slots


def cache_outputs(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """Each GroupQueryAttention node's name -> its (present key, present value) outputs; a ModelError when the
    graph has none (only the fused decoder graph caches through GroupQueryAttention)."""
    found = {
        n.name: (n.output[1], n.output[2]) for n in model.graph.node if n.op_type == ATTENTION and len(n.output) >= 3
    }
    if not found:
        raise ModelError(
            "quantization.kv_cache: int8 needs the fused decoder graph (GroupQueryAttention), and this model has none",
            "Use a Llama, Mistral or Qwen2 model, or kv_cache: fp32",
        )
    return found


def calibrate_scales(fp32_path: Path, feeds: list[dict], names: list[str]) -> dict[str, np.ndarray]:
    """Per cached tensor `names` (present.N.key/value, the same in the FP32 model as in the one quantized): the
    largest |value| per channel over the feeds, / 127."""
    import onnxruntime as ort

    from edgeq.feeds import feed_for

    session = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    peaks: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed_for(session.get_inputs(), feed))):
            peak = np.abs(value).max(axis=(0, 2)).reshape(-1)  # [batch, kv heads, tokens, head dim] -> per channel
            peaks[name] = np.maximum(peaks.get(name, peak), peak)
    return {name: np.maximum(peak, 1e-6).astype(np.float32) / 127.0 for name, peak in peaks.items()}


def store_int8(model: onnx.ModelProto, scales: dict[str, np.ndarray]) -> int:
    """Make every GroupQueryAttention cache INT8 with these scales (in place); returns how many layers changed."""
    for node in model.graph.node:
        if node.op_type != ATTENTION:
            continue
        key, value = node.output[1], node.output[2]
        while len(node.input) < K_SCALE_INPUT:
            node.input.append("")
        for slot, name in ((K_SCALE_INPUT, key), (V_SCALE_INPUT, value)):
            initializer = f"{name}.kv_scale"
            model.graph.initializer.append(numpy_helper.from_array(scales[name], initializer))
            if len(node.input) > slot:
                node.input[slot] = initializer
            else:
                node.input.append(initializer)
        node.attribute.extend(
            [
                helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                helper.make_attribute("v_quant_type", "PER_CHANNEL"),
                helper.make_attribute("kv_cache_bit_width", 8),
            ]
        )
    cached = {name for pair in cache_outputs(model).values() for name in pair}
    past = {name.replace("present", "past_key_values") for name in cached}
    for info in [*model.graph.input, *model.graph.output]:
        if info.name in cached | past:
            info.type.tensor_type.elem_type = TensorProto.INT8
    return len(cached) // 2


def quantize_kv_cache(source: Path, out: Path, fp32_path: Path, feeds: list[dict]) -> dict:
    """Write `source` with an INT8 KV cache (scales calibrated on the FP32 model) to `out`; the report's details."""
    model = onnx.load(str(source))
    names = [name for pair in cache_outputs(model).values() for name in pair]
    scales = calibrate_scales(fp32_path, feeds, names)
    layers = store_int8(model, scales)
    onnx.save(model, str(out))
    return {
        "kv_cache": {
            "dtype": "int8",
            "quant_type": "PER_CHANNEL (symmetric, one static scale per channel of a head)",
            "layers": layers,
            "calibration_batches": len(feeds),
            "from_artifact": source.parent.name,
        }
    }
