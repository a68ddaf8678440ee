"""FP16 as a whole-model precision: onnxruntime's float16 converter, inputs and outputs kept FP32.

For runtimes that compute in FP16 (CoreML MLProgram on the Apple Neural Engine), an FP16 model is what they take
whole; a QDQ model splits into many partitions there. Weights halve; the ops onnxruntime's converter blocks (no
FP16 kernel anywhere, e.g. Range, TopK) stay FP32 with casts around them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx


def convert_to_fp16(source: Path, target: Path) -> dict:
    """Write the FP16 model; return how many nodes compute in FP16 and which ops stayed FP32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(source))
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    onnx.save(converted, str(target))
    kept = Counter(n.op_type for n in model.graph.node if n.op_type in DEFAULT_OP_BLOCK_LIST)
    return {
        "precision": "fp16",
        "converter": "onnxruntime.transformers.float16 (inputs/outputs FP32)",
        "kept_fp32_ops": dict(kept),
        "casts": sum(n.op_type == "Cast" for n in converted.graph.node),
    }
