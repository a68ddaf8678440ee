"""A language model's folder as onnxruntime-genai runs it: `genai_config.json` beside the ONNX model, the tokenizer
and the chat template.

edgeq's decoder graphs take `input_ids`, `attention_mask`, `position_ids` (optimum's traced export only: the fused
graph's GroupQueryAttention takes positions from the mask) and `past_key_values.N.key/value`, and return `logits`
and `present.N.key/value`. onnxruntime-genai's `decoder` section names exactly these, so the same model.onnx serves
edgeq's own loop and `og.Model(folder)`. A fused graph shares one cache buffer between past and present
(`past_present_share_buffer`), as the builder's models do; a traced one grows its cache by a position a step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from edgeq.errors import ModelError

CONFIG_FILE = "genai_config.json"
# genai model types that use the plain decoder pipeline (inputs and outputs named in the config)
GENAI_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "phi3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "granite",
        "olmo",
        "smollm3",
        "gpt2",
    }
)


def unsupported(model_dir: Path) -> str | None:
    """Why onnxruntime-genai cannot run this decoder folder as it is, or None when it can."""
    from edgeq.static_decoder import static_decoder
    from edgeq.tasks import model_config

    if static_decoder(model_dir) is not None:
        return "a static prefill/decode pair for an NPU (the host keeps its KV cache; see README, language models on an NPU)"
    model_type = str(model_config(model_dir).get("model_type", ""))
    return None if model_type in GENAI_TYPES else f"onnxruntime-genai has no decoder type for model_type '{model_type}'"


def genai_config(model_dir: Path, onnx_name: str = "model.onnx") -> dict:
    """The genai_config.json content for a decoder folder (config.json + generation_config.json)."""
    from edgeq.plan import model_shape

    if reason := unsupported(model_dir):
        raise ModelError(reason, f"Known: {', '.join(sorted(GENAI_TYPES))}")
    config = _read(Path(model_dir) / "config.json")
    generation = _read(Path(model_dir) / "generation_config.json", required=False)
    shape = model_shape(config)
    graph = _graph_io(Path(model_dir) / onnx_name)
    inputs = {
        "input_ids": "input_ids",
        "attention_mask": "attention_mask",
        "position_ids": "position_ids",
        "past_key_names": "past_key_values.%d.key",
        "past_value_names": "past_key_values.%d.value",
    }
    if "position_ids" not in graph.inputs:
        del inputs["position_ids"]
    context = shape.max_positions or 2048
    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    pad = generation.get("pad_token_id", config.get("pad_token_id"))
    return {
        "model": {
            "type": config["model_type"],
            "bos_token_id": generation.get("bos_token_id", config.get("bos_token_id")),
            "eos_token_id": eos,
            "pad_token_id": pad if pad is not None else (eos[0] if isinstance(eos, list) else eos),
            "context_length": context,
            "vocab_size": shape.vocab,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": onnx_name,
                "head_size": shape.head_dim,
                "hidden_size": shape.hidden,
                "num_attention_heads": shape.heads,
                "num_hidden_layers": shape.layers,
                "num_key_value_heads": shape.kv_heads,
                "inputs": inputs,
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "do_sample": False,
            "max_length": int(context),
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": graph.shares_cache,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


class _GraphIO(NamedTuple):
    inputs: set[str]
    shares_cache: bool


def _graph_io(path: Path) -> _GraphIO:
    """The decoder's input names, and whether its attention can share past and present cache buffers
    (GroupQueryAttention can; a traced graph's Concat cannot)."""
    from edgeq.artifact import load_onnx

    if not path.is_file():
        raise ModelError(f"no {path.name} in '{path.parent}'", "Build or export the model first")
    model = load_onnx(path, load_weights=False)
    return _GraphIO(
        {i.name for i in model.graph.input}, any(n.op_type == "GroupQueryAttention" for n in model.graph.node)
    )


def write_genai_config(folder: Path, onnx_name: str = "model.onnx") -> Path:
    """Write genai_config.json into a decoder's folder (its config.json must be there); return its path."""
    from edgeq.atomic import write_text

    path = Path(folder) / CONFIG_FILE
    write_text(path, json.dumps(genai_config(folder, onnx_name), indent=2) + "\n")
    return path


def _read(path: Path, required: bool = True) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise ModelError(f"no {path.name} in '{path.parent}'", "A language model's folder needs it") from None
        return {}
    except ValueError as exc:
        raise ModelError(f"'{path}' is not valid JSON ({exc})") from None
