"""A static decoder pair's shapes and inputs (export.decoder: static): what the export writes beside the graphs,
what a task feeds them, and what a quantizer or a report reads of them. The graphs themselves are written by
edgeq.export.htp_decoder; this module is below both the tasks and the stages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

MASK_FILL = -100.0  # an additive mask's "may not look": softmax weight e^-100 = 4e-44, and 16-bit scales survive it
STATIC_DECODER = "static_decoder.json"  # beside a static pair: {"tokens", "cache", "decode"}
DECODE_FILE = "decode.onnx"
# The nodes of the residual stream in the graphs edgeq.export.htp_decoder writes: each layer's two residual Adds, the
# RMSNorms that read the stream, and the final norm (quantization.residual_stream: float keeps them out of QDQ).
RESIDUAL_STREAM_NODES = (
    "*/attention_residual",
    "*/mlp_residual",
    "*/input_layernorm",
    "*/post_attention_layernorm",
    "/model/norm",
)


@dataclass(frozen=True)
class KVShape:
    """The static shape of one graph: `tokens` new tokens beside a cache of `cache` tokens."""

    tokens: int
    cache: int


def static_decoder(folder: Path) -> KVShape | None:
    """The prefill's shape of a static decoder pair in `folder` (None when the folder holds no such pair)."""
    import json

    path = Path(folder) / STATIC_DECODER
    if not path.is_file():
        return None
    found = json.loads(path.read_text())
    return KVShape(int(found["tokens"]), int(found["cache"]))


def kv_feed(
    ids: list[int], shape: KVShape, layers: int, kv_heads: int, head_dim: int, start: int = 0, cache=None
) -> dict:
    """The inputs of one step: `ids` (at most shape.tokens, right-padded) at positions start.., attending to the
    first `start` entries of `cache` (a dict of past_key.i/past_value.i arrays; None: an empty cache) and causally
    to each other."""
    n, total = shape.tokens, shape.cache + shape.tokens
    count = len(ids)
    feed = {
        "input_ids": np.array([list(ids) + [0] * (n - count)], np.int32),
        "position_ids": np.array([[min(start + t, start + max(count - 1, 0)) for t in range(n)]], np.int32),
    }
    mask = np.full((1, 1, n, total), MASK_FILL, np.float32)
    for t in range(n):
        mask[0, 0, t, :start] = 0.0  # the cache's filled entries
        mask[0, 0, t, shape.cache : shape.cache + min(t, count - 1) + 1] = 0.0  # itself and the new tokens before it
    feed["attention_mask"] = mask
    for i in range(layers):
        for kind in ("key", "value"):
            name = f"past_{kind}.{i}"
            feed[name] = (
                cache[name] if cache is not None else np.zeros((1, kv_heads, shape.cache, head_dim), np.float32)
            )
    return feed
