"""Memory planner for language models: from config.json alone (no weights), what each precision needs on a
device at a context length, and which fits.

    memory = runtime + weights + prepacked + KV cache + workspace
    runtime  = the inference process before any weight (`runtime_mb` in the device profile; default 55 MiB: a
               Python process with numpy and onnxruntime imported, 45 MiB, plus what one session costs before any
               weight, its thread pools, allocator arena and kernels, 10 MiB; both measured on x86-64 Linux, the
               second with a one-node model)
    weights  = parameters × bytes per weight in edgeq's formats (scales included):
               fp32 4, fp16 2, int8 1 + a 4-byte scale per output channel, int4 0.5 + a 4-byte scale and a 4-bit
               zero point per block of 32 (MatMulNBits, GatherBlockQuantized)
    prepacked = on onnxruntime's CPU EP, MLAS keeps its own packed copy of 4-bit weights beside the file's
               (codes, and a scale and a block sum per block of 32: 0.75 bytes per weight); 0 elsewhere
    KV cache = 2 × layers × kv_heads × head_dim × context × bytes of the KV dtype the device's runtime keeps
    workspace = one prefill chunk of min(context, 512) tokens: its logits and hidden activations, and one
               layer's attention scores against the whole context (the export's attention is not fused)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgeq.errors import DeviceError, ModelError

BLOCK = 32
PREFILL_CHUNK = 512
RUNTIME_MB = 55  # imports (45 MiB) + a session with no weights (10 MiB): VmRSS measured on x86-64 Linux
PACKED_INT4 = 0.5 + 8 / BLOCK  # MLAS's packed 4-bit weights: codes, and a float scale and block sum per block
KV_BYTES = {"float32": 4, "float16": 2}


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


def read_config(path: str | Path) -> dict:
    """config.json of a folder, or the file itself; a ModelError for anything that is not a model config."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ModelError(f"'{path}' has no config.json", "Give a model folder or its config.json (weights are not needed)")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ModelError(f"'{file}' is not a model config (not JSON)", "Give a Hugging Face config.json") from None
    if not isinstance(config, dict) or not (config.get("num_hidden_layers") or config.get("n_layer")):
        raise ModelError(f"'{file}' is not a language model config (no num_hidden_layers)",
                         "Give the config.json of a decoder such as Llama, Mistral, Qwen2, Phi-3 or GPT-2")  # fmt: skip
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
    biases = (heads + 2 * kv_heads) * head_dim * (gpt2 or config.get("model_type") == "qwen2" or bool(config.get("attention_bias")))
    biases += (2 * hidden + intermediate) * gpt2  # attention and MLP output projections, MLP input
    norms = (4 if gpt2 else 2) * hidden
    tied = config.get("tie_word_embeddings", gpt2)
    positions = int(config.get("n_positions") or 0) * hidden if gpt2 else 0
    embeddings = vocab * hidden * (1 if tied else 2) + positions
    matmul = layers * (attention + mlp) + embeddings
    total = matmul + layers * (biases + norms) + hidden * (2 if gpt2 else 1)
    return Shape(total, matmul, layers, hidden, heads, kv_heads, head_dim, vocab, intermediate,
                 config.get("max_position_embeddings") or config.get("n_positions"))  # fmt: skip


def weight_bytes(shape: Shape, precision: str) -> int:
    rest = (shape.parameters - shape.matmul_parameters) * 4  # norms and biases stay FP32
    per = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5 + 4 / BLOCK + 0.5 / BLOCK}[precision]
    channel_scales = shape.matmul_parameters // shape.hidden * 4 if precision == "int8" else 0  # a scale per column
    return int(shape.matmul_parameters * per + channel_scales + rest)


def kv_cache_bytes(shape: Shape, context: int, dtype: str, batch: int = 1) -> int:
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * context * KV_BYTES[dtype] * batch


def prepacked_bytes(shape: Shape, precision: str, device) -> int:
    cpu = device.execution_provider.name == "CPUExecutionProvider"
    return int(shape.matmul_parameters * PACKED_INT4) if cpu and precision == "int4" else 0


def workspace_bytes(shape: Shape, context: int) -> int:
    chunk = min(context, PREFILL_CHUNK)
    activations = chunk * (shape.vocab + 4 * shape.hidden + 3 * shape.intermediate) * 4
    scores = shape.heads * chunk * context * 4
    return activations + scores


def plan(model: str | Path, device, context: int, memory_mb: int | None = None) -> dict:
    """The `edgeq plan` JSON of DESIGN.md for one model on one device."""
    config = read_config(model)
    shape = model_shape(config)
    if shape.max_positions and context > shape.max_positions:
        raise ModelError(f"context {context} is over the model's max_position_embeddings ({shape.max_positions})",
                         f"Plan for at most {shape.max_positions} tokens")  # fmt: skip
    memory_mb = memory_mb or device.memory_mb
    if not memory_mb:
        raise DeviceError(f"device '{device.id}' has no memory facts (memory_mb)", "Pass --memory-mb N")
    memory = memory_mb * 1024 * 1024
    kv_dtype = device.kv_cache_dtype
    runtime = int((device.runtime_mb if device.runtime_mb is not None else RUNTIME_MB) * 2**20)
    options = []
    for precision in ("fp32", "fp16", "int8", "int4"):
        weights, kv, work = weight_bytes(shape, precision), kv_cache_bytes(shape, context, kv_dtype), workspace_bytes(shape, context)
        packed = prepacked_bytes(shape, precision, device)
        total = runtime + weights + packed + kv + work
        options.append({"precision": precision, "weights_bytes": weights, "prepacked_bytes": packed,
                        "runtime_bytes": runtime, "kv_cache_bytes": kv, "kv_dtype": kv_dtype,
                        "workspace_bytes": work, "total_bytes": total, "fits": total <= memory})  # fmt: skip
    fitting = [o["precision"] for o in options if o["fits"]]
    return {
        "model": {"config": str(model), "architecture": (config.get("architectures") or [config.get("model_type")])[0],
                  "parameters": shape.parameters, "layers": shape.layers, "hidden": shape.hidden, "heads": shape.heads,
                  "kv_heads": shape.kv_heads, "head_dim": shape.head_dim, "vocab": shape.vocab},
        "device": {"id": device.id, "memory_bytes": memory, "memory_source": "--memory-mb" if memory_mb != device.memory_mb else "device profile"},
        "context": context,
        "options": options,
        "largest_fitting": fitting[0] if fitting else None,
        "method": __doc__.split("\n\n", 1)[1].strip(),
    }  # fmt: skip


def compare_at_equal_memory(plans: list[dict]) -> dict:
    """Two (or more) models in the same memory: the most precise option of each that fits, side by side."""
    rows = []
    for p in plans:
        best = next((o for o in p["options"] if o["fits"]), None)
        rows.append({"model": p["model"]["config"], "parameters": p["model"]["parameters"],
                     "precision": best["precision"] if best else None, "total_bytes": best["total_bytes"] if best else None})  # fmt: skip
    return {"memory_bytes": plans[0]["device"]["memory_bytes"], "context": plans[0]["context"], "models": rows,
            "note": "what fits is arithmetic; which is better at equal memory must be measured (edgeq build both)"}
