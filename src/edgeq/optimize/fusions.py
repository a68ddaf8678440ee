"""onnxruntime's transformer optimizer: fuse Attention, SkipLayerNormalization, BiasGelu and friends."""

from __future__ import annotations

import logging
from pathlib import Path


def fuse_transformer(fp32_path: Path, out_path: Path, model_type: str, opt_level: int) -> dict[str, int]:
    """Write the fused model; return how many of each fused operator were made."""
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    model = optimize_model(str(fp32_path), model_type=model_type, num_heads=0, hidden_size=0, opt_level=opt_level)
    model.save_model_to_file(str(out_path))
    return {op: count for op, count in model.get_fused_operator_statistics().items() if count}
