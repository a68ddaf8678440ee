"""A Llama-family decoder as the static-shape graphs a phone's NPU runs ("KV mode" of the NPU LLM pipelines): one
graph that takes N new tokens beside a KV cache of fixed length L, exported twice from the same weights, as the
prefill graph (N tokens) and the decode graph (1 token).

Only ops the HTP runs, at fixed shapes: no GroupQueryAttention, no contrib ops, no shape arithmetic. Inputs:
`input_ids` [1, N] (int32), `position_ids` [1, N] (int32), `attention_mask` [1, 1, N, L + N] (additive, float:
0 where a token may look, edgeq.static_decoder.MASK_FILL where it may not: -100, not -inf, so one 16-bit scale resolves the scores
beside it), and `past_key.<i>`/`past_value.<i>` [1, kv heads, L, head dim]. Outputs: `logits` [1, N, vocabulary]
and the N new entries of the cache, `present_key.<i>`/`present_value.<i>` [1, kv heads, N, head dim]; the host
writes them into its cache (a ring of L). Grouped-query attention is a reshape: the query heads that share a KV
head are stacked along the token axis and attend together; the mask is tiled to match. The attention's scale
(1/sqrt(head dim), a power of two for a 64-wide head) is folded into the query projection's weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeq.export.decoder import _config, _Weights, read_dimensions, rotary_tables
from edgeq.static_decoder import DECODE_FILE, STATIC_DECODER, KVShape


def export_htp_decoder(model_dir: Path, out_dir: Path, prefill: int, cache: int, opset: int = 21) -> dict[str, Path]:
    """Write out_dir/model.onnx (the prefill: `prefill` tokens) and out_dir/decode.onnx (1 token), both beside a
    cache of `cache` tokens, and static_decoder.json that says so; return their paths by name."""
    import json

    config = _config(model_dir)
    weights = _Weights(Path(model_dir))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, file, shape in (
        ("prefill", "model.onnx", KVShape(prefill, cache)),
        ("decode", DECODE_FILE, KVShape(1, cache)),
    ):
        model = _StaticDecoder(config, weights, shape).build(opset)
        onnx.save(model, str(out_dir / file))
        written[name] = out_dir / file
    (out_dir / STATIC_DECODER).write_text(json.dumps({"tokens": prefill, "cache": cache, "decode": DECODE_FILE}) + "\n")
    return written


class _StaticDecoder:
    def __init__(self, config: dict, weights: _Weights, shape: KVShape):
        self.config, self.weights, self.shape = config, weights, shape
        read_dimensions(self, config)
        self.groups = self.heads // self.kv_heads
        self.nodes: list[onnx.NodeProto] = []
        self.model = onnx.ModelProto()
        self.constants: set[str] = set()

    def build(self, opset: int) -> onnx.ModelProto:
        cos, sin = rotary_tables(self.config, self.head_dim)
        self._init("rotary_cos", np.concatenate([cos, cos], axis=1))  # [positions, head_dim]
        self._init("rotary_sin", np.concatenate([sin, sin], axis=1))
        angles = [
            self._node(
                "Unsqueeze",
                [self._node("Gather", [f"rotary_{k}", "position_ids"], f"/rotary/{k}"), "axis_1"],
                f"/rotary/{k}_heads",
            )
            for k in ("cos", "sin")
        ]  # [1, 1, N, head_dim]
        self._const("axis_1", np.array([1], np.int64))
        mask = self._node(
            "Tile",
            ["attention_mask", self._const("mask_tiles", np.array([1, 1, self.groups, 1], np.int64))],
            "/attention_mask/Tile",
        )
        table = self.weights.get("model.embed_tokens.weight")
        self._init("model.embed_tokens.weight", table)
        hidden = self._node("Gather", ["model.embed_tokens.weight", "input_ids"], "/model/embed_tokens/Gather")
        for layer in range(self.layers):
            hidden = self._layer(layer, hidden, angles, mask)
        normed = self._rms_norm("/model/norm", hidden, "model.norm.weight")
        head = table if not self.weights.has("lm_head.weight") else self.weights.get("lm_head.weight")
        self._init("lm_head.weight_transposed", np.ascontiguousarray(head.T))
        self.nodes.append(
            helper.make_node("MatMul", [normed, "lm_head.weight_transposed"], ["logits"], name="/lm_head/MatMul")
        )
        return self._model(opset)

    def _layer(self, i: int, hidden: str, angles: list[str], mask: str) -> str:
        prefix, names = f"/model/layers.{i}", f"model.layers.{i}"
        normed = self._rms_norm(f"{prefix}/input_layernorm", hidden, f"{names}.input_layernorm.weight")
        attn = f"{prefix}/self_attn"
        scale = float(self.head_dim**-0.5)
        q = self._heads(f"{attn}/q_proj", normed, f"{names}.self_attn.q_proj", self.heads, scale)
        k = self._heads(f"{attn}/k_proj", normed, f"{names}.self_attn.k_proj", self.kv_heads)
        v = self._heads(f"{attn}/v_proj", normed, f"{names}.self_attn.v_proj", self.kv_heads)
        q, k = self._rotate(f"{attn}/q_rotary", q, angles), self._rotate(f"{attn}/k_rotary", k, angles)
        self.nodes.append(helper.make_node("Identity", [k], [f"present_key.{i}"], name=f"{attn}/present_key"))
        self.nodes.append(helper.make_node("Identity", [v], [f"present_value.{i}"], name=f"{attn}/present_value"))
        keys = self._node("Concat", [f"past_key.{i}", k], f"{attn}/keys", axis=2)  # [1, kv, L + N, D]
        values = self._node("Concat", [f"past_value.{i}", v], f"{attn}/values", axis=2)
        n, d = self.shape.tokens, self.head_dim
        grouped = self._reshape(f"{attn}/q_grouped", q, [1, self.kv_heads, self.groups * n, d])
        keys_t = self._node("Transpose", [keys], f"{attn}/keys_transposed", perm=[0, 1, 3, 2])
        scores = self._node("MatMul", [grouped, keys_t], f"{attn}/scores")
        masked = self._node("Add", [scores, mask], f"{attn}/masked")
        probs = self._node("Softmax", [masked], f"{attn}/Softmax", axis=-1)
        context = self._node("MatMul", [probs, values], f"{attn}/context")  # [1, kv, groups * N, D]
        context = self._reshape(f"{attn}/context_heads", context, [1, self.heads, n, d])
        context = self._node("Transpose", [context], f"{attn}/context_tokens", perm=[0, 2, 1, 3])
        context = self._reshape(f"{attn}/context_flat", context, [1, n, self.heads * d])
        attended = self._matmul(f"{attn}/o_proj", context, f"{names}.self_attn.o_proj")
        hidden = self._node("Add", [hidden, attended], f"{prefix}/attention_residual")
        normed = self._rms_norm(
            f"{prefix}/post_attention_layernorm", hidden, f"{names}.post_attention_layernorm.weight"
        )
        mlp = f"{prefix}/mlp"
        gate = self._matmul(f"{mlp}/gate_proj", normed, f"{names}.mlp.gate_proj")
        up = self._matmul(f"{mlp}/up_proj", normed, f"{names}.mlp.up_proj")
        silu = self._node("Mul", [gate, self._node("Sigmoid", [gate], f"{mlp}/act_fn/Sigmoid")], f"{mlp}/act_fn/Mul")
        down = self._matmul(f"{mlp}/down_proj", self._node("Mul", [silu, up], f"{mlp}/Mul"), f"{names}.mlp.down_proj")
        return self._node("Add", [hidden, down], f"{prefix}/mlp_residual")

    def _heads(self, prefix: str, x: str, weight_name: str, heads: int, scale: float = 1.0) -> str:
        """A projection to `heads` heads: [1, N, hidden] -> [1, heads, N, head_dim] (its bias, if any, added)."""
        weight = self.weights.get(f"{weight_name}.weight") * scale
        self._init(f"{weight_name}.weight", np.ascontiguousarray(weight.T))
        out = self._node("MatMul", [x, f"{weight_name}.weight"], f"{prefix}/MatMul")
        if self.weights.has(f"{weight_name}.bias"):
            self._init(f"{weight_name}.bias", self.weights.get(f"{weight_name}.bias") * scale)
            out = self._node("Add", [out, f"{weight_name}.bias"], f"{prefix}/Add")
        split = self._reshape(f"{prefix}/split_heads", out, [1, self.shape.tokens, heads, self.head_dim])
        return self._node("Transpose", [split], f"{prefix}/heads_first", perm=[0, 2, 1, 3])

    def _rotate(self, prefix: str, x: str, angles: list[str]) -> str:
        """x·cos + rotate_half(x)·sin, rotate_half(x) = [-x2, x1] (transformers' non-interleaved rotary)."""
        half = self.head_dim // 2
        first = self._node(
            "Slice",
            [
                x,
                self._const("zero", np.array([0], np.int64)),
                self._const("half", np.array([half], np.int64)),
                self._const("axis_3", np.array([3], np.int64)),
            ],
            f"{prefix}/first_half",
        )
        second = self._node(
            "Slice",
            [x, "half", self._const("whole", np.array([self.head_dim], np.int64)), "axis_3"],
            f"{prefix}/second_half",
        )
        rotated = self._node(
            "Concat", [self._node("Neg", [second], f"{prefix}/Neg"), first], f"{prefix}/rotate_half", axis=3
        )
        return self._node(
            "Add",
            [
                self._node("Mul", [x, angles[0]], f"{prefix}/times_cos"),
                self._node("Mul", [rotated, angles[1]], f"{prefix}/times_sin"),
            ],
            f"{prefix}/Add",
        )

    def _rms_norm(self, prefix: str, x: str, weight: str) -> str:
        """onnxruntime's SimplifiedLayerNormalization (the QNN EP makes it the HTP's RmsNorm). ONNX's shape inference
        has no schema for it: its output's type and shape are declared, so the quantizer's calibration sees every
        tensor after it."""
        self._init(weight, self.weights.get(weight))
        out = self._node("SimplifiedLayerNormalization", [x, weight], prefix, axis=-1, epsilon=self.eps)
        shape = [1, self.shape.tokens, self.hidden]
        self.model.graph.value_info.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, shape))
        return out

    def _matmul(self, prefix: str, x: str, weight_name: str) -> str:
        self._init(f"{weight_name}.weight", np.ascontiguousarray(self.weights.get(f"{weight_name}.weight").T))
        return self._node("MatMul", [x, f"{weight_name}.weight"], f"{prefix}/MatMul")

    def _reshape(self, name: str, x: str, shape: list[int]) -> str:
        return self._node(
            "Reshape", [x, self._const(f"shape_{'x'.join(map(str, shape))}", np.array(shape, np.int64))], name
        )

    def _node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        output = f"{name}/output_0"
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def _const(self, name: str, value: np.ndarray) -> str:
        if name not in self.constants:
            self.constants.add(name)
            self._init(name, value)
        return name

    def _init(self, name: str, value: np.ndarray) -> None:
        self.model.graph.initializer.append(numpy_helper.from_array(value, name))

    def _model(self, opset: int) -> onnx.ModelProto:
        n, cache, kv = self.shape.tokens, self.shape.cache, [1, self.kv_heads]
        inputs = [
            helper.make_tensor_value_info("input_ids", TensorProto.INT32, [1, n]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT32, [1, n]),
            helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, [1, 1, n, cache + n]),
        ]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, n, int(self.config["vocab_size"])])]
        for i in range(self.layers):
            for kind in ("key", "value"):
                inputs.append(
                    helper.make_tensor_value_info(f"past_{kind}.{i}", TensorProto.FLOAT, [*kv, cache, self.head_dim])
                )
                outputs.append(
                    helper.make_tensor_value_info(f"present_{kind}.{i}", TensorProto.FLOAT, [*kv, n, self.head_dim])
                )
        model = self.model
        model.graph.name = f"decoder_{n}x{cache}"
        model.graph.node.extend(self.nodes)
        model.graph.input.extend(inputs)
        model.graph.output.extend(outputs)
        model.opset_import.extend([helper.make_opsetid("", opset)])
        model.producer_name, model.ir_version = "edgeq", 9
        return model
