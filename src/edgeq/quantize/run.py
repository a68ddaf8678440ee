"""Dynamic and static quantization of one ONNX model with onnxruntime's quantizer."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import onnx

from edgeq.buildlog import quiet_libraries
from edgeq.feeds import feed_for
from edgeq.quantize.calibration import FeedReader, input_specs
from edgeq.quantize.four_bit_budget import Budget
from edgeq.quantize.index_paths import index_path_nodes
from edgeq.recipe.schema import QuantizationConfig

# Under `table_type: weight` only the token embedding tables (the Gathers of this input) take the weight type; the
# position, token-type and rotary tables keep the activation type (16 bits with uint16): their bytes are negligible,
# and 8 bits on a rotary cos/sin table turn every query and key by up to half a step of 1/127 (see README's NPU part).
TOKEN_IDS = "input_ids"
QUANT_TYPES = {"int8": "QInt8", "uint8": "QUInt8", "int16": "QInt16", "uint16": "QUInt16"}
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def quantize_model(
    fp32_path: Path,
    out_path: Path,
    q: QuantizationConfig,
    op_types: list[str] | None,
    calibration_feeds: list[dict] | None = None,
    scheme: str = "onnxruntime",
    power_of_two: bool = False,
    activation_overrides: dict[str, str] | None = None,
    folded: bool = False,
    four_bit_budget: Budget | None = None,
) -> dict:
    """Write the quantized model to out_path; return what was done beyond the config (for the report).

    Static mode needs calibration feeds (model inputs, one dict a batch); `scheme` "qnn" applies onnxruntime's
    QNN rules, and then `activation_overrides` (tensor → integer type) sets single tensors' activation types (the
    quantizer adds the type converts their neighbours need). `four_bit_budget`: the search of
    `quantization.four_bit_budget`, with the loss its sensitivities are measured by."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet_libraries()  # onnxruntime's quantizer warns on the root logger (into build.log during a build)
    fp32_path, out_path = Path(fp32_path).resolve(), Path(out_path).resolve()
    # onnxruntime's pre-processing writes scratch models (sym_shape_infer_temp.onnx, <uuid>.data) into the current
    # folder: work inside our own scratch folder so that nothing lands in the user's.
    with tempfile.TemporaryDirectory(prefix="edgeq-quant-") as tmp, contextlib.chdir(tmp):
        prepared = Path(tmp) / "prepared.onnx"
        done = {"scheme": scheme if q.mode == "static" else "onnxruntime"}
        if q.mode == "static" and q.residual_stream == "float":
            q, done["residual_stream_float"] = _float_residual_stream(fp32_path, q)
        if q.mode == "static" and q.attention_mask_fill is not None:
            fp32_path, done["mask_fill_softened"] = _soften_mask(fp32_path, Path(tmp), q.attention_mask_fill)
        if q.mode == "int4":
            _quantize_int4(fp32_path, out_path, q, op_types)
            return {**done, "scheme": "onnxruntime MatMulNBits (round to nearest)", "block_size": q.block_size}
        if q.mode == "static" and scheme == "qnn":
            _quantize_qnn(fp32_path, out_path, Path(tmp), q, op_types, calibration_feeds or [], activation_overrides)
            if q.kv_cache == "int8":
                cache = cache_tensors(onnx.load(str(fp32_path), load_external_data=False))
                done["kv_cache_int8"] = {"tensors": len(cache), "type": "uint8 (QDQ encodings, one scale a tensor)"}
            return _rounded(done, q, fp32_path, out_path, calibration_feeds, four_bit_budget)
        prepare(fp32_path, prepared, optimize=not folded)
        kept = index_path_nodes(onnx.load(str(prepared), load_external_data=False)) if q.mode == "static" else []
        if kept:
            done["index_nodes_kept_float"] = len(kept)
        common = dict(
            op_types_to_quantize=op_types,
            per_channel=q.per_channel,
            reduce_range=q.reduce_range,
            weight_type=getattr(QuantType, QUANT_TYPES[q.weight_type]),
            nodes_to_exclude=excluded_nodes(onnx.load(str(prepared), load_external_data=False), q.nodes_to_exclude)
            + kept,
        )
        if q.mode == "dynamic":
            # DefaultTensorType: fused contrib ops (Attention, SkipLayerNormalization) defeat shape inference
            extra = {"WeightSymmetric": q.symmetric_weights, "DefaultTensorType": onnx.TensorProto.FLOAT}
            quantize_dynamic(str(prepared), str(out_path), extra_options=extra, **common)
            if forms := _in_cpu_forms(out_path):
                done["cpu_forms"] = forms
        else:
            _quantize_static(prepared, out_path, q, common, calibration_feeds or [], power_of_two)
            if q.excluded_weights == "int8" and q.nodes_to_exclude:
                done["excluded_weights_int8"] = _store_excluded_int8(out_path, common["nodes_to_exclude"])
            if power_of_two:
                done["power_of_two"] = _power_of_two(out_path, prepared, calibration_feeds or [])
            return _rounded(done, q, prepared, out_path, calibration_feeds, four_bit_budget)
    return done


def _in_cpu_forms(path: Path) -> dict[str, int]:
    """Rewrite the model at `path` in the forms onnxruntime's CPU EP runs fastest (edgeq.optimize.cpu_forms); a
    model with external data (a language model) is left as written."""
    from edgeq.optimize.cpu_forms import split_fused_norms

    model = onnx.load(str(path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        return {}
    if forms := split_fused_norms(model):
        onnx.save(model, str(path))
    return forms


def _rounded(
    done: dict, q: QuantizationConfig, fp32_path: Path, out_path: Path, feeds: list[dict] | None, budget=None
) -> dict:
    """`four_bit_weights` (or the MatMuls `four_bit_budget`'s search chooses) to 4-bit blocks; then `weight_rounding:
    gptq`: the other MatMul weights re-rounded on the quantizer's final scales (a 4-bit weight's DequantizeLinear
    has no zero point, so GPTQ's 8-bit pass leaves it alone)."""
    gptq = q.weight_rounding == "gptq"
    if q.four_bit_weights or q.four_bit_budget:
        from edgeq.quantize.four_bit import four_bit_weights

        if q.four_bit_budget and budget is None:
            raise ValueError("quantization.four_bit_budget needs the search's loss (quantize_model's four_bit_budget)")
        patterns = q.four_bit_weights or ["*"]
        search = budget if q.four_bit_budget else None
        found = four_bit_weights(fp32_path, out_path, patterns, feeds or [], gptq, search, q.four_bit_scales)
        done = {**done, "four_bit_weights": found}
    if not gptq:
        return done
    from edgeq.quantize.gptq_rounding import round_matmul_weights

    return {**done, "weight_rounding": round_matmul_weights(fp32_path, out_path, feeds or [])}


def _float_residual_stream(fp32_path: Path, q: QuantizationConfig) -> tuple[QuantizationConfig, dict]:
    """The config with the residual stream's nodes kept float, and what the report says of it."""
    from edgeq.errors import RecipeError
    from edgeq.static_decoder import RESIDUAL_STREAM_NODES

    kept = excluded_nodes(onnx.load(str(fp32_path), load_external_data=False), list(RESIDUAL_STREAM_NODES))
    if not kept:
        raise RecipeError(
            f"quantization.residual_stream: float: {fp32_path} has no residual-stream node "
            f"({', '.join(RESIDUAL_STREAM_NODES)})",
            "it applies to the graphs export.decoder: static writes",
        )
    reason = (
        "a language model's residual stream carries a few channels far larger than the rest, which one 16-bit "
        "scale per tensor cannot resolve beside them; the HTP (v73+) runs these ops in FP16"
    )
    widened = q.model_copy(update={"nodes_to_exclude": [*q.nodes_to_exclude, *kept]})
    return widened, {"nodes": len(kept), "reason": reason}


def _store_excluded_int8(out_path: Path, names: list[str]) -> int:
    """The FP32 MatMuls left out of activation quantization keep INT8 weights (weight-only); returns how many."""
    from edgeq.quantize.weight_only import store_weights_int8

    model = onnx.load(str(out_path))
    rewritten = store_weights_int8(model, names)
    onnx.save(model, str(out_path))
    return len(rewritten)


def _power_of_two(quantized_path: Path, float_path: Path, feeds: list[dict]) -> dict:
    """Rewrite every scale to the power of two with the least error (activations measured on 16 batches)."""
    import numpy as np
    import onnxruntime as ort

    from edgeq.artifact import with_outputs
    from edgeq.quantize.pow2 import activation_tensors, power_of_two_scales

    model, float_model = onnx.load(str(quantized_path)), onnx.load(str(float_path))
    wanted = activation_tensors(model)
    probe = with_outputs(float_model, wanted)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    samples: dict[str, list] = {n: [] for n in wanted}
    for feed in feeds[:16]:
        for name, value in zip(wanted, session.run(wanted, feed_for(session.get_inputs(), feed))):
            samples[name].append(value.ravel())
    counts = power_of_two_scales(model, float_model, {n: np.concatenate(v) for n, v in samples.items()})
    onnx.save(model, str(quantized_path))
    return counts


def _soften_mask(fp32_path: Path, tmp: Path, value: float) -> tuple[Path, int]:
    from edgeq.optimize.mask import soften_mask_fill

    model = onnx.load(str(fp32_path))
    changed = soften_mask_fill(model, value)
    if not changed:
        return fp32_path, 0
    softened = tmp / "mask_softened.onnx"
    onnx.save(model, str(softened))
    return softened, changed


def _quantize_qnn(fp32_path, out_path, tmp, q, op_types, feeds, activation_overrides=None) -> None:
    """onnxruntime's QNN recipe: QNN preprocessing, then get_qnn_qdq_config (which knows the HTP's rules: fixed
    16-bit Sigmoid/Tanh output parameters, 8/16-bit type converts) with the recipe's types and calibration."""
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    preprocessed = tmp / "qnn_preprocessed.onnx"
    source = preprocessed if qnn_preprocess_model(str(fp32_path), str(preprocessed)) else fp32_path
    model = onnx.load(str(source), load_external_data=False)
    reader = FeedReader(input_specs(model), feeds)
    weight_type = getattr(QuantType, QUANT_TYPES[q.weight_type])
    overrides = (
        {name: [{"quant_type": weight_type}] for name in _token_tables(model)} if q.table_type == "weight" else {}
    )
    if q.per_channel:
        overrides |= {
            name: [{"quant_type": weight_type, "symmetric": True, "axis": 1}]  # the HTP refuses asymmetric per-axis
            for name in _matmul_weights(model)
        }
    overrides |= {
        name: [{"quant_type": getattr(QuantType, QUANT_TYPES[kind])}]
        for name, kind in (activation_overrides or {}).items()
    }
    if q.kv_cache == "int8":  # the recipe's choice wins over a block's activation type
        overrides |= {name: [{"quant_type": QuantType.QUInt8}] for name in cache_tensors(model)}
    config = get_qnn_qdq_config(
        str(source),
        reader,
        calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[q.calibration.method]),
        activation_type=getattr(QuantType, QUANT_TYPES[q.resolved_activation_type]),
        weight_type=weight_type,
        per_channel=q.per_channel,
        activation_symmetric=q.symmetric_activations,
        weight_symmetric=q.symmetric_weights,
        calibration_providers=["CPUExecutionProvider"],
        op_types_to_quantize=op_types,
        nodes_to_exclude=excluded_nodes(model, q.nodes_to_exclude) or None,
        init_overrides=overrides or None,
    )
    quantize(str(source), str(out_path), config)


def cache_tensors(model: onnx.ModelProto) -> list[str]:
    """A static decoder graph's KV cache as the host holds it: its inputs (past_key.i, past_value.i) and the entries
    it writes (present_key.i, present_value.i). Under `kv_cache: int8` they take 8-bit encodings, so the cache the
    host keeps and feeds back is a byte an entry (the decode step reads all of it for every token)."""
    return [i.name for i in model.graph.input if i.name.startswith("past_")] + [
        o.name for o in model.graph.output if o.name.startswith("present_")
    ]


def _matmul_weights(model: onnx.ModelProto) -> list[str]:
    """The 2-D initializers MatMul nodes multiply by (input B: one scale per output column). onnxruntime's QNN
    config keeps a MatMul's weight per-tensor ("QNN does not support per-channel MatMul"); the HTP (v68 to v75
    emulators, onnxruntime-qnn 2.x) takes a per-column weight on MatMul, and a per-tensor 8-bit weight costs a
    language model most of its fidelity (SmolLM2 w8a16: perplexity +33% on the CPU simulation). Per column, the
    HTP takes symmetric weights only (an asymmetric one fails the session), whatever `symmetric_weights` says."""
    shapes = {t.name: len(t.dims) for t in model.graph.initializer}
    return sorted({n.input[1] for n in model.graph.node if n.op_type == "MatMul" and shapes.get(n.input[1]) == 2})


def _token_tables(model: onnx.ModelProto) -> list[str]:
    """The 2-D initializers that Gather nodes look the model's input_ids up in: the token embedding tables (not
    the position, token-type or rotary tables, which other indices read)."""
    shapes = {t.name: len(t.dims) for t in model.graph.initializer}
    return sorted(
        {
            n.input[0]
            for n in model.graph.node
            if n.op_type == "Gather" and shapes.get(n.input[0]) == 2 and n.input[1] == TOKEN_IDS
        }
    )


def _quantize_int4(fp32_path: Path, out_path: Path, q: QuantizationConfig, op_types: list[str] | None) -> None:
    """onnxruntime's own weight-only quantizer: MatMul (and Gather) weights to 4 bits in blocks."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # its own logger prints a line for every node it skips (thousands for a real LM) and opset notices edgeq resolves
    quiet_libraries("onnxruntime.quantization.matmul_nbits_quantizer")
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(fp32_path)),
        bits=4,
        block_size=q.block_size,
        is_symmetric=q.symmetric_weights,
        nodes_to_exclude=list(q.nodes_to_exclude),
        op_types_to_quantize=tuple(op_types or ("MatMul",)),
        accuracy_level=q.accuracy_level,
    )
    original = {
        o.domain or "ai.onnx": o.version for o in onnx.load(str(fp32_path), load_external_data=False).opset_import
    }
    quantizer.process()
    model = quantizer.model.model
    for opset in model.opset_import:  # the quantizer stamps ai.onnx 21 without converting ops (ReduceMean axes...)
        if (opset.domain or "ai.onnx") == "ai.onnx" and "ai.onnx" in original:
            opset.version = original["ai.onnx"]
    model.ir_version = max(model.ir_version, 10)  # 4-bit tensor types
    onnx.save(model, str(out_path))


def excluded_nodes(model: onnx.ModelProto, patterns: list[str]) -> list[str]:
    """The node names the recipe's nodes_to_exclude match: exact names, or shell-style patterns (`*`, `?`)."""
    import fnmatch

    names = [n.name for n in model.graph.node]
    return sorted(
        {name for p in patterns for name in (fnmatch.filter(names, p) if any(c in p for c in "*?[") else [p])}
    )


def prepare(fp32_path: Path, prepared: Path, optimize: bool = True) -> None:
    """onnxruntime's pre-processing (shape inference, basic fusions; `optimize` False for a model legalization has
    already folded, whose structure is then kept). Symbolic shape inference fails on some exports ('Incomplete
    symbolic shape inference'); ONNX's own shape inference is then enough."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_optimization=not optimize)
    except Exception:
        quant_pre_process(str(fp32_path), str(prepared), skip_optimization=not optimize, skip_symbolic_shape=True)


def _quantize_static(prepared, out_path, q, common, feeds, const_b_only: bool = False) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calib = q.calibration
    model = onnx.load(str(prepared), load_external_data=False)
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
    sixteen_bit = q.resolved_activation_type in ("uint16", "int16")
    reader = FeedReader(input_specs(model), feeds)
    extra = {
        "ActivationSymmetric": q.symmetric_activations,
        "WeightSymmetric": q.symmetric_weights,
        "CalibPercentile": calib.percentile,
        "UseQDQContribOps": sixteen_bit and opset < 21,  # 16-bit Q/DQ needs opset 21 or com.microsoft
        "MatMulConstBOnly": const_b_only,  # a DPU takes the weight MatMuls; activation x activation stays on the CPU
    }
    quantize_static(
        str(prepared),
        str(out_path),
        reader,
        quant_format=QuantFormat.QDQ if q.resolved_format == "qdq" else QuantFormat.QOperator,
        activation_type=getattr(QuantType, QUANT_TYPES[q.resolved_activation_type]),
        calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[calib.method]),
        calibration_providers=["CPUExecutionProvider"],
        extra_options=extra,
        **common,
    )
