"""onnxruntime's transformer optimizer: fuse Attention, SkipLayerNormalization, BiasGelu and friends."""

from __future__ import annotations

import logging
from pathlib import Path


def fuse_transformer(
    fp32_path: Path,
    out_path: Path,
    model_type: str,
    opt_level: int,
    attention: bool = True,
    embed_layer_norm: bool = False,
) -> dict[str, int]:
    """Write the fused model; return how many of each fused operator were made."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    options = FusionOptions(model_type)
    options.enable_attention = attention
    options.enable_embed_layer_norm = embed_layer_norm
    model = optimize_model(
        str(fp32_path),
        model_type=model_type,
        num_heads=0,
        hidden_size=0,
        opt_level=opt_level,
        optimization_options=options,
    )
    model.save_model_to_file(str(out_path))
    return {op: count for op, count in model.get_fused_operator_statistics().items() if count}


# onnxruntime's fusion family per config.json model_type; encoders of the BERT family share BERT's patterns.
FAMILIES = {
    "vit": "vit",
    "deit": "vit",
    "beit": "vit",
    "data2vec-vision": "vit",
    "dinov2": "vit",
    "swin": "swin",
    "gpt2": "gpt2",
}


def fusion_family(model_type: str, model_dir: Path) -> str:
    """The recipe's fusion family, or (for `auto`) the one config.json's model_type implies (default bert)."""
    if model_type != "auto":
        return model_type
    from edgeq.model_folder import config_of

    return FAMILIES.get(config_of(model_dir).get("model_type", ""), "bert")
