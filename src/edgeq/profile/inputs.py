"""Model inputs built from the model's own input signature: token ids inside the vocabulary for text models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.feeds import DTYPES as ORT_TYPES  # onnxruntime type strings -> numpy


def synthetic_feed(
    input_specs, batch_size: int, sequence_length: int, vocab_size: int, seed: int = 0, head_dim: int | None = None
) -> dict:
    """Fixed dims are kept; the first free dim is the batch, the others the sequence length. A decoder's KV cache
    (`past_*` inputs of rank 4) starts empty: no past positions, and `head_dim` (from the model's config) where the
    graph leaves the head size free, as onnxruntime-genai's builder does."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in input_specs:
        shape = [d if isinstance(d, int) and d > 0 else None for d in spec.shape]
        shape = [d if d is not None else (batch_size if i == 0 else sequence_length) for i, d in enumerate(shape)]
        if spec.name.startswith("past") and len(shape) == 4:
            shape = [shape[0], shape[1], 0, spec.shape[3] if isinstance(spec.shape[3], int) else (head_dim or shape[3])]
        dtype = ORT_TYPES.get(spec.type, np.float32)
        if spec.name == "input_ids":
            feed[spec.name] = rng.integers(1000 if vocab_size > 1000 else 1, vocab_size, size=shape).astype(dtype)
        elif spec.name == "attention_mask":
            feed[spec.name] = np.ones(shape, dtype=dtype)
        elif np.issubdtype(dtype, np.integer) or dtype == np.bool_:
            feed[spec.name] = np.zeros(shape, dtype=dtype)
        else:
            feed[spec.name] = rng.standard_normal(shape).astype(dtype)
    return feed


def head_dim_near(model_path: Path) -> int | None:
    """A decoder's head size from the config.json or genai_config.json beside the model, if any."""
    import json

    folder = Path(model_path).parent
    try:
        if (folder / "config.json").is_file():
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            heads = config.get("num_attention_heads")
            return config.get("head_dim") or (
                config["hidden_size"] // heads if heads and "hidden_size" in config else None
            )
        if (folder / "genai_config.json").is_file():
            return json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))["model"]["decoder"].get(
                "head_size"
            )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def vocab_size_near(model_path: Path, default: int = 1000) -> int:
    """Vocabulary size of the tokenizer.json beside the model, if any."""
    file = Path(model_path).parent / "tokenizer.json"
    if not file.is_file():
        return default
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(file)).get_vocab_size()
