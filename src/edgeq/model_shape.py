"""A decoder's shape from its config.json alone (no weights): parameter counts, heads, tied embeddings, sliding
windows. What the memory planner (edgeq.plan) and the build-cost estimate (edgeq.build_cost) both count from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgeq.errors import ModelError

# Model types whose transformers config class unties the LM head from the embedding by default (transformers 4.57);
# every other type inherits PretrainedConfig's tie_word_embeddings=True.
UNTIED_BY_DEFAULT = {
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "phi",
    "phi3",
    "phimoe",
    "gpt_neox",
    "gptj",
    "codegen",
    "stablelm",
    "olmo",
    "olmo2",
    "granite",
    "deepseek_v3",
    "nemotron",
    "glm",
    "glm4",
}


@dataclass(frozen=True)
class Shape:
    parameters: int
    matmul_parameters: int  # the part in weight matrices (quantized by int8/int4), the rest stays as it is
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    intermediate: int
    max_positions: int | None
    tied: bool = True
    tied_from: str = "config"
    window: int | None = None  # sliding-window attention: tokens a sliding layer attends to
    sliding_layers: int = 0  # how many layers slide (the rest attend to the whole context)


def read_config(path: str | Path) -> dict:
    """config.json of a folder, or the file itself; a ModelError for anything that is not a model config."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ModelError(
            f"'{path}' has no config.json", "Give a model folder or its config.json (weights are not needed)"
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ModelError(f"'{file}' is not a model config (not JSON)", "Give a Hugging Face config.json") from None
    if not isinstance(config, dict) or not (config.get("num_hidden_layers") or config.get("n_layer")):
        raise ModelError(
            f"'{file}' is not a language model config (no num_hidden_layers)",
            "Give the config.json of a decoder such as Llama, Mistral, Qwen2, Phi-3 or GPT-2",
        )
    return config


def model_shape(config: dict) -> Shape:
    """Parameter counts from a decoder's config.json (Llama-family gated MLPs; GPT-2's 4x MLP with biases)."""
    layers = int(config.get("num_hidden_layers") or config["n_layer"])
    hidden = int(config.get("hidden_size") or config.get("n_embd"))
    heads = int(config.get("num_attention_heads") or config.get("n_head"))
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    vocab = int(config["vocab_size"])
    gpt2 = config.get("model_type") == "gpt2"
    intermediate = int(config.get("intermediate_size") or config.get("n_inner") or 4 * hidden)
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = (2 if gpt2 else 3) * hidden * intermediate
    biases = (
        (heads + 2 * kv_heads)
        * head_dim
        * (gpt2 or config.get("model_type") == "qwen2" or bool(config.get("attention_bias")))
    )
    biases += (2 * hidden + intermediate) * gpt2  # attention and MLP output projections, MLP input
    norms = (4 if gpt2 else 2) * hidden
    tied, tied_from = tied_embeddings(config)
    positions = int(config.get("n_positions") or 0) * hidden if gpt2 else 0
    embeddings = vocab * hidden * (1 if tied else 2) + positions
    matmul = layers * (attention + mlp) + embeddings
    total = matmul + layers * (biases + norms) + hidden * (2 if gpt2 else 1)
    window, sliding = sliding_window(config, layers)
    return Shape(
        total,
        matmul,
        layers,
        hidden,
        heads,
        kv_heads,
        head_dim,
        vocab,
        intermediate,
        config.get("max_position_embeddings") or config.get("n_positions"),
        tied,
        tied_from,
        window,
        sliding,
    )


def tied_embeddings(config: dict) -> tuple[bool, str]:
    """Whether the LM head is the embedding table, and where that came from: the config's key, else what
    transformers' config class for the model type defaults to."""
    if "tie_word_embeddings" in config:
        return bool(config["tie_word_embeddings"]), "config"
    kind = config.get("model_type", "?")
    return kind not in UNTIED_BY_DEFAULT, f"transformers' default for model_type {kind}"


def sliding_window(config: dict, layers: int) -> tuple[int | None, int]:
    """(window, number of sliding layers): `layer_types` when the config lists them (Gemma 3, ...), else
    `sliding_window_pattern` (every Nth layer global), Gemma 2's alternation, or every layer when a window is
    set and not switched off (`use_sliding_window: false`, as Qwen2 ships)."""
    window = config.get("sliding_window")
    if not isinstance(window, int) or window <= 0 or config.get("use_sliding_window") is False:
        return None, 0
    if isinstance(config.get("layer_types"), list):
        return window, sum(kind == "sliding_attention" for kind in config["layer_types"])
    pattern = config.get("sliding_window_pattern")
    if isinstance(pattern, int) and pattern > 1:
        return window, sum((i + 1) % pattern != 0 for i in range(layers))
    if config.get("model_type") == "gemma2":
        return window, (layers + 1) // 2
    return window, layers
