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
    KV cache = 2 × layers × kv_heads × head_dim × context × bytes of the KV dtype (the device runtime's, or
               --kv-dtype: fp32 4, fp16 2, int8 1, its per-channel scales not counted); a windowed runtime
               (onnxruntime-genai) keeps only the window on sliding-window layers, edgeq's artifact the whole context
    workspace = one prefill chunk of min(context, 512) tokens: its logits and hidden activations, and one
               layer's attention scores against the whole context (the export's attention is not fused)
    max_context = the longest context whose memory fits: memory is quadratic in the context below 512 tokens
               and in each stretch between the window and the model's limit linear, so it is solved in closed
               form per stretch, not searched
"""

from __future__ import annotations

from pathlib import Path

from edgeq.errors import DeviceError, ModelError
from edgeq.model_shape import Shape, model_shape, read_config, sliding_window, tied_embeddings  # noqa: F401

BLOCK = 32
PREFILL_CHUNK = 512
RUNTIME_MB = 55  # imports (45 MiB) + a session with no weights (10 MiB): VmRSS measured on x86-64 Linux
PACKED_INT4 = 0.5 + 8 / BLOCK  # MLAS's packed 4-bit weights: codes, and a float scale and block sum per block
KV_BYTES = {"float32": 4, "float16": 2, "int8": 1}
KV_DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "int8"}  # --kv-dtype names


def weight_bytes(shape: Shape, precision: str) -> int:
    rest = (shape.parameters - shape.matmul_parameters) * 4  # norms and biases stay FP32
    per = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5 + 4 / BLOCK + 0.5 / BLOCK}[precision]
    channel_scales = shape.matmul_parameters // shape.hidden * 4 if precision == "int8" else 0  # a scale per column
    return int(shape.matmul_parameters * per + channel_scales + rest)


def kv_cache_bytes(shape: Shape, context: int, dtype: str, batch: int = 1, windowed: bool = False) -> int:
    """The KV cache at `context` tokens; `windowed`: a runtime that keeps only the window on sliding layers."""
    per_layer_token = 2 * shape.kv_heads * shape.head_dim * KV_BYTES[dtype] * batch
    if not windowed or not shape.sliding_layers:
        return per_layer_token * shape.layers * context
    full = shape.layers - shape.sliding_layers
    return per_layer_token * (full * context + shape.sliding_layers * min(context, shape.window))


def prepacked_bytes(shape: Shape, precision: str, device) -> int:
    cpu = device.execution_provider.name == "CPUExecutionProvider"
    return int(shape.matmul_parameters * PACKED_INT4) if cpu and precision == "int4" else 0


def workspace_bytes(shape: Shape, context: int) -> int:
    chunk = min(context, PREFILL_CHUNK)
    activations = chunk * (shape.vocab + 4 * shape.hidden + 3 * shape.intermediate) * 4
    scores = shape.heads * chunk * context * 4
    return activations + scores


def runtime_bytes(device) -> int:
    return int((device.runtime_mb if device.runtime_mb is not None else RUNTIME_MB) * 2**20)


def total_bytes(shape: Shape, precision: str, device, context: int, kv_dtype: str, windowed: bool = False) -> int:
    return (
        runtime_bytes(device)
        + weight_bytes(shape, precision)
        + prepacked_bytes(shape, precision, device)
        + kv_cache_bytes(shape, context, kv_dtype, windowed=windowed)
        + workspace_bytes(shape, context)
    )


def max_context(shape: Shape, precision: str, device, memory: int, kv_dtype: str, windowed: bool = False) -> int:
    """The longest context (tokens) whose total fits `memory`; 0 when not even one token does. Between the
    breakpoints (1, the 512-token prefill chunk, the window, the model's limit) the total is a polynomial of
    degree at most 2 in the context: each stretch's is fitted exactly through three of its points and solved."""
    import math

    def total(context: float) -> int:
        return total_bytes(shape, precision, device, int(context), kv_dtype, windowed)

    limit = shape.max_positions or 1 << 24
    if total(1) > memory:
        return 0
    if total(limit) <= memory:
        return limit
    points = sorted({1, limit, *(p for p in (PREFILL_CHUNK, shape.window if windowed else None) if p and p < limit)})
    for start, end in zip(points, points[1:]):
        if total(end) <= memory:
            continue
        middle = (start + end) // 2 if end - start > 1 else start
        xs = [start, middle, end] if start < middle < end else [start, end]
        a, b, c = _through(xs, [total(x) for x in xs])
        if a == 0:
            found = (memory - c) / b
        else:
            found = (-b + math.sqrt(b * b - 4 * a * (c - memory))) / (2 * a)
        found = min(max(int(found), start), end)
        while found > start and total(found) > memory:  # rounding: the integer below the root
            found -= 1
        while found + 1 <= end and total(found + 1) <= memory:
            found += 1
        return found
    return limit


def _through(xs: list[int], ys: list[int]) -> tuple[float, float, float]:
    """The polynomial a x² + b x + c through two or three points (a = 0 for two)."""
    if len(xs) == 2:
        b = (ys[1] - ys[0]) / (xs[1] - xs[0])
        return 0.0, b, ys[0] - b * xs[0]
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    d01, d12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
    a = (d12 - d01) / (x2 - x0)
    b = d01 - a * (x0 + x1)
    return a, b, y0 - a * x0 * x0 - b * x0


def plan(
    model: str | Path,
    device,
    context: int,
    memory_mb: int | None = None,
    kv_dtype: str | None = None,
    recipe: str | Path | None = None,
) -> dict:
    """The `edgeq plan` JSON of DESIGN.md for one model on one device. `kv_dtype` (fp32|fp16|int8): the KV
    cache's precision; default: what the device's runtime keeps. `recipe`: the recipe whose build `build_cost`
    estimates (default: edgeq init's starter recipe for the model and device)."""
    from edgeq.build_cost import plan_build_cost

    config = read_config(model)
    shape = model_shape(config)
    if shape.max_positions and context > shape.max_positions:
        raise ModelError(
            f"context {context} is over the model's max_position_embeddings ({shape.max_positions})",
            f"Plan for at most {shape.max_positions} tokens",
        )
    memory_mb = memory_mb or device.memory_mb
    if not memory_mb:
        raise DeviceError(f"device '{device.id}' has no memory facts (memory_mb)", "Pass --memory-mb N")
    memory = memory_mb * 1024 * 1024
    kv = KV_DTYPES[kv_dtype] if kv_dtype else device.kv_cache_dtype
    options = []
    for precision in ("fp32", "fp16", "int8", "int4"):
        total = total_bytes(shape, precision, device, context, kv)
        option = {
            "precision": precision,
            "weights_bytes": weight_bytes(shape, precision),
            "prepacked_bytes": prepacked_bytes(shape, precision, device),
            "runtime_bytes": runtime_bytes(device),
            "kv_cache_bytes": kv_cache_bytes(shape, context, kv),
            "kv_dtype": kv,
            "workspace_bytes": workspace_bytes(shape, context),
            "total_bytes": total,
            "fits": total <= memory,
            "max_context": max_context(shape, precision, device, memory, kv),
        }
        option["max_context_limited_by"] = "model" if option["max_context"] == shape.max_positions else "memory"
        if shape.sliding_layers:
            windowed = total_bytes(shape, precision, device, context, kv, windowed=True)
            option["windowed_runtime"] = {
                "kv_cache_bytes": kv_cache_bytes(shape, context, kv, windowed=True),
                "total_bytes": windowed,
                "fits": windowed <= memory,
                "max_context": max_context(shape, precision, device, memory, kv, True),
            }
        options.append(option)
    fitting = [o["precision"] for o in options if o["fits"]]
    return {
        "model": {
            "config": str(model),
            "architecture": (config.get("architectures") or [config.get("model_type")])[0],
            "parameters": shape.parameters,
            "layers": shape.layers,
            "hidden": shape.hidden,
            "heads": shape.heads,
            "kv_heads": shape.kv_heads,
            "head_dim": shape.head_dim,
            "vocab": shape.vocab,
            "tied_embeddings": shape.tied,
            "tied_embeddings_from": shape.tied_from,
            **(
                {"sliding_window": {"window": shape.window, "layers": shape.sliding_layers}}
                if shape.sliding_layers
                else {}
            ),
        },
        "device": {
            "id": device.id,
            "memory_bytes": memory,
            "memory_source": "--memory-mb" if memory_mb != device.memory_mb else "device profile",
        },
        "context": context,
        "kv_dtype": kv,
        "options": options,
        "largest_fitting": fitting[0] if fitting else None,
        "build_cost": plan_build_cost(model, device, recipe),
        "method": __doc__.split("\n\n", 1)[1].strip(),
    }


BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}


def compare_at_equal_memory(plans: list[dict]) -> dict:
    """Models in the same memory: the most precise option of each that fits, ranked by the weight bits that fit
    (parameters × bits per weight: more of a model, or the same model at more bits, first); ties by context."""
    rows = []
    for p in plans:
        best = next((o for o in p["options"] if o["fits"]), None)
        rows.append(
            {
                "model": p["model"]["config"],
                "parameters": p["model"]["parameters"],
                "precision": best["precision"] if best else None,
                "total_bytes": best["total_bytes"] if best else None,
                "weight_bits": p["model"]["parameters"] * BITS[best["precision"]] if best else 0,
                "max_context": best["max_context"] if best else 0,
            }
        )
    rows.sort(key=lambda r: (-r["weight_bits"], -r["max_context"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return {
        "memory_bytes": plans[0]["device"]["memory_bytes"],
        "context": plans[0]["context"],
        "models": rows,
        "ranked_by": "weight bits that fit (parameters x bits per weight), then the longest context",
        "note": "what fits is arithmetic; which is better at equal memory must be measured (edgeq build both)",
    }
