"""A Llama-family decoder written directly as the graph onnxruntime-genai's model builder makes: fused ops instead of
the thousands of shape nodes a traced export carries.

Per layer: SkipSimplifiedLayerNormalization (residual add + RMSNorm in one op), one MatMul for Q, K and V packed,
GroupQueryAttention (rotary embedding, KV cache and causal mask inside it), the output projection, and the SwiGLU
MLP (gate, up, SiLU as x·sigmoid(x), down). SmolLM2 becomes ~340 nodes where optimum's trace has ~7,400: at batch 1
a decode step's time was mostly per-node overhead, not arithmetic.

Inputs `input_ids`, `attention_mask` and `past_key_values.N.key/value`; outputs `logits` and `present.N.key/value`
(onnxruntime-genai's names). There is no `position_ids`: GroupQueryAttention takes positions from the mask
(sequence lengths per row), so a batch is right-padded and a text starts at position 0. Weights are the folder's
own safetensors; every MatMul weight is a [in, out] initializer, so every quantizer and edgeq's islands see it.
Tied embeddings are read once: the FP32 graph holds the table for the lookup and its transpose for the head; a
quantized build stores them once (`share_tied_table`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.errors import ModelError
from edgeq.graph import MS_DOMAIN

MODEL_TYPES = frozenset({"llama", "mistral", "qwen2"})
TIED_KEY = "edgeq.tied_embedding"  # metadata: "<gather node>,<head MatMul node>" when the two read one table


def unsupported(model_dir: Path) -> str | None:
    """Why this folder cannot be written as the fused decoder graph (None when it can)."""
    config = _config(model_dir)
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        return f"model_type '{model_type}' is not one of {', '.join(sorted(MODEL_TYPES))}"
    if config.get("hidden_act", "silu") != "silu":
        return f"hidden_act '{config.get('hidden_act')}' (the fused graph writes SiLU)"
    scaling = config.get("rope_scaling") or {}
    if (scaling.get("rope_type") or scaling.get("type") or "default") not in ("default", "linear", "llama3"):
        return f"rope_scaling {scaling} (the fused graph knows default, linear and llama3)"
    if config.get("mlp_bias") or (config.get("attention_bias") and model_type != "qwen2"):
        return "biases on the MLP or the attention's output projection"
    window = config.get("sliding_window") if config.get("use_sliding_window", model_type == "mistral") else None
    if window and window < config.get("max_position_embeddings", 0):
        return f"a sliding window of {window} tokens"
    if not list(Path(model_dir).glob("*.safetensors")):
        return "no .safetensors weights in the folder"
    return None


def export_decoder(model_dir: Path, out_path: Path, opset: int) -> Path:
    """Write the fused decoder graph of a Llama-family folder to out_path; return it."""
    config = _config(model_dir)
    weights = _Weights(Path(model_dir))
    graph = _DecoderGraph(config, weights)
    model = graph.build(opset)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    large = sum(t.ByteSize() for t in model.graph.initializer) > 1_800_000_000
    onnx.save(model, str(out_path), save_as_external_data=large, location=f"{out_path.name}.data")
    return out_path


def rotary_tables(config: dict, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of position x inverse frequency, [max positions, head_dim / 2], as transformers computes them."""
    theta = float(config.get("rope_theta", 10000.0))
    rotary_dim = int(head_dim * float(config.get("partial_rotary_factor", 1.0)))
    inv_freq = 1.0 / theta ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    positions = np.arange(int(config.get("max_position_embeddings", 2048)), dtype=np.float64)
    if kind == "linear":
        positions = positions / float(scaling["factor"])
    elif kind == "llama3":
        inv_freq = _llama3_frequencies(inv_freq, scaling)
    angles = np.outer(positions, inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _llama3_frequencies(inv_freq: np.ndarray, scaling: dict) -> np.ndarray:
    factor, low, high = float(scaling["factor"]), float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old = float(scaling["original_max_position_embeddings"])
    wavelength = 2 * np.pi / inv_freq
    smooth = np.clip((old / wavelength - low) / (high - low), 0.0, 1.0)
    scaled = np.where(wavelength > old / low, inv_freq / factor, inv_freq)
    middle = (wavelength <= old / low) & (wavelength >= old / high)
    return np.where(middle, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)


class _Weights:
    """The folder's safetensors, read tensor by tensor as FP32 numpy arrays (bf16/fp16 widened)."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.files = {}
        for path in sorted(folder.glob("*.safetensors")):
            handle = safe_open(str(path), framework="pt")
            for name in handle.keys():
                self.files[name] = handle

    def has(self, name: str) -> bool:
        return name in self.files

    def get(self, name: str) -> np.ndarray:
        if name not in self.files:
            raise ModelError(f"the model's weights have no tensor '{name}'", "Is it a Llama-family checkpoint?")
        return self.files[name].get_tensor(name).float().numpy()


def read_dimensions(graph, config: dict) -> None:
    """A Llama-family config's sizes onto a graph writer: heads, kv_heads, hidden, head_dim, layers, eps."""
    graph.heads = int(config["num_attention_heads"])
    graph.kv_heads = int(config.get("num_key_value_heads") or graph.heads)
    graph.hidden = int(config["hidden_size"])
    graph.head_dim = int(config.get("head_dim") or graph.hidden // graph.heads)
    graph.layers = int(config["num_hidden_layers"])
    graph.eps = float(config.get("rms_norm_eps", 1e-6))


class _DecoderGraph:
    def __init__(self, config: dict, weights: _Weights):
        self.config, self.weights = config, weights
        read_dimensions(self, config)
        self.nodes: list[onnx.NodeProto] = []
        # initializers go straight into the model's own graph: make_graph and make_model would copy every weight
        # twice more (SmolLM2's export peaked at 3.7 GB that way)
        self.model = onnx.ModelProto()

    def build(self, opset: int) -> onnx.ModelProto:
        lengths, total = self._mask_lengths()
        cos, sin = rotary_tables(self.config, self.head_dim)
        self._init("cos_cache", cos)
        self._init("sin_cache", sin)
        table = self.weights.get("model.embed_tokens.weight")
        self._init("model.embed_tokens.weight", table)
        hidden = self._node("Gather", ["model.embed_tokens.weight", "input_ids"], "/model/embed_tokens/Gather")
        residual = None
        for layer in range(self.layers):
            hidden, residual = self._layer(layer, hidden, residual, lengths, total)
        normed, _ = self._norm("/model/norm", hidden, residual, "model.norm.weight")
        tied = not self.weights.has("lm_head.weight")
        head = table if tied else self.weights.get("lm_head.weight")
        self._init("lm_head.weight_transposed", np.ascontiguousarray(head.T))
        self.nodes.append(
            helper.make_node("MatMul", [normed, "lm_head.weight_transposed"], ["logits"], name="/lm_head/MatMul")
        )
        return self._model(opset, tied)

    def _layer(self, i: int, hidden: str, residual: str | None, lengths: str, total: str) -> tuple[str, str]:
        prefix, names = f"/model/layers.{i}", f"model.layers.{i}"
        normed, residual = self._norm(f"{prefix}/input_layernorm", hidden, residual, f"{names}.input_layernorm.weight")
        qkv = self._qkv(i, normed)
        cache = [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        attention = f"{prefix}/self_attn/GroupQueryAttention/output_0"
        self.nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                [qkv, "", "", *cache, lengths, total, "cos_cache", "sin_cache"],
                [attention, f"present.{i}.key", f"present.{i}.value"],
                name=f"{prefix}/self_attn/GroupQueryAttention",
                domain=MS_DOMAIN,
                num_heads=self.heads,
                kv_num_heads=self.kv_heads,
                scale=float(self.head_dim**-0.5),
                do_rotary=1,
                rotary_interleaved=0,
                local_window_size=-1,
            )
        )
        attended = self._matmul(f"{prefix}/self_attn/o_proj", attention, f"{names}.self_attn.o_proj")
        normed, residual = self._norm(
            f"{prefix}/post_attention_layernorm", attended, residual, f"{names}.post_attention_layernorm.weight"
        )
        gate = self._matmul(f"{prefix}/mlp/gate_proj", normed, f"{names}.mlp.gate_proj")
        up = self._matmul(f"{prefix}/mlp/up_proj", normed, f"{names}.mlp.up_proj")
        sigmoid = self._node("Sigmoid", [gate], f"{prefix}/mlp/act_fn/Sigmoid")
        silu = self._node("Mul", [gate, sigmoid], f"{prefix}/mlp/act_fn/Mul")
        product = self._node("Mul", [silu, up], f"{prefix}/mlp/Mul")
        return self._matmul(f"{prefix}/mlp/down_proj", product, f"{names}.mlp.down_proj"), residual

    def _qkv(self, i: int, normed: str) -> str:
        """Q, K and V as one [hidden, (heads + 2 kv heads) x head_dim] MatMul, as GroupQueryAttention takes them."""
        names = [f"model.layers.{i}.self_attn.{p}_proj" for p in ("q", "k", "v")]
        weight = np.concatenate([self.weights.get(f"{n}.weight") for n in names], axis=0)
        self._init(f"model.layers.{i}.self_attn.qkv_proj.weight", np.ascontiguousarray(weight.T))
        node = f"/model/layers.{i}/self_attn/qkv_proj/MatMul"
        out = self._node("MatMul", [normed, f"model.layers.{i}.self_attn.qkv_proj.weight"], node)
        if all(self.weights.has(f"{n}.bias") for n in names):
            self._init(
                f"model.layers.{i}.self_attn.qkv_proj.bias",
                np.concatenate([self.weights.get(f"{n}.bias") for n in names]),
            )
            out = self._node(
                "Add", [out, f"model.layers.{i}.self_attn.qkv_proj.bias"], f"/model/layers.{i}/self_attn/qkv_proj/Add"
            )
        return out

    def _matmul(self, prefix: str, x: str, weight_name: str) -> str:
        self._init(f"{weight_name}.weight", np.ascontiguousarray(self.weights.get(f"{weight_name}.weight").T))
        return self._node("MatMul", [x, f"{weight_name}.weight"], f"{prefix}/MatMul")

    def _norm(self, prefix: str, x: str, residual: str | None, weight: str) -> tuple[str, str]:
        """RMSNorm of x (+ the residual stream, when there is one); returns (normalized, new residual stream)."""
        self._init(weight, self.weights.get(weight))
        if residual is None:
            return self._node(
                "SimplifiedLayerNormalization", [x, weight], prefix, axis=-1, epsilon=self.eps, stash_type=1
            ), x
        out, total = f"{prefix}/output_0", f"{prefix}/output_3"
        self.nodes.append(
            helper.make_node(
                "SkipSimplifiedLayerNormalization",
                [residual, x, weight],
                [out, "", "", total],
                name=prefix,
                domain=MS_DOMAIN,
                epsilon=self.eps,
            )
        )
        return out, total

    def _mask_lengths(self) -> tuple[str, str]:
        """GroupQueryAttention's seqlens_k (real tokens per row minus one) and total sequence length, from the mask."""
        prefix = "/model/attention_mask"
        self._init(f"{prefix}/one", np.array([1], np.int64))
        self._init(f"{prefix}/axis_1", np.array(1, np.int64))
        counted = self._node("ReduceSum", ["attention_mask", f"{prefix}/one"], f"{prefix}/ReduceSum", keepdims=0)
        last = self._node("Sub", [counted, f"{prefix}/one"], f"{prefix}/Sub")
        lengths = self._node("Cast", [last], f"{prefix}/Cast_lengths", to=TensorProto.INT32)
        shape = self._node("Shape", ["attention_mask"], f"{prefix}/Shape")
        width = self._node("Gather", [shape, f"{prefix}/axis_1"], f"{prefix}/Gather", axis=0)
        return lengths, self._node("Cast", [width], f"{prefix}/Cast_total", to=TensorProto.INT32)

    def _node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        output = f"{name}/output_0"
        domain = MS_DOMAIN if op in ("SkipSimplifiedLayerNormalization", "GroupQueryAttention") else ""
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, domain=domain, **attrs))
        return output

    def _init(self, name: str, value: np.ndarray) -> None:
        self.model.graph.initializer.append(numpy_helper.from_array(value, name))

    def _model(self, opset: int, tied: bool) -> onnx.ModelProto:
        cache = ["batch_size", self.kv_heads, "past_sequence_length", self.head_dim]
        present = ["batch_size", self.kv_heads, "total_sequence_length", self.head_dim]
        inputs = [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        ]
        outputs = [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, ["batch_size", "sequence_length", self.config["vocab_size"]]
            )
        ]
        for i in range(self.layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, cache))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, present))
        model = self.model
        model.graph.name = "decoder"
        model.graph.node.extend(self.nodes)
        model.graph.input.extend(inputs)
        model.graph.output.extend(outputs)
        model.opset_import.extend([helper.make_opsetid("", opset), helper.make_opsetid(MS_DOMAIN, 1)])
        model.producer_name, model.ir_version = "edgeq", 10
        if tied:
            helper.set_model_props(model, {TIED_KEY: "/model/embed_tokens/Gather,/lm_head/MatMul"})
        return model


def _config(model_dir: Path) -> dict:
    from edgeq.model_folder import config_of

    return config_of(model_dir, required=True)
