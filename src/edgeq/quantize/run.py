"""Dynamic and static quantization of one ONNX model with onnxruntime's quantizer."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx

from edgeq.quantize.calibration import TextCalibrationReader, input_specs
from edgeq.recipe.schema import QuantizationConfig
from edgeq.text import TextEncoder

QUANT_TYPES = {"int8": "QInt8", "uint8": "QUInt8", "int16": "QInt16", "uint16": "QUInt16"}
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def quantize_model(
    fp32_path: Path,
    out_path: Path,
    q: QuantizationConfig,
    op_types: list[str] | None,
    calibration_texts: list[str] | None = None,
    encoder: TextEncoder | None = None,
) -> Path:
    """Write the quantized model to out_path. Static mode needs calibration texts and their encoder."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's quantizer warns on the root logger
    with tempfile.TemporaryDirectory(prefix="edgeq-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        prepare(fp32_path, prepared)
        common = dict(
            op_types_to_quantize=op_types,
            per_channel=q.per_channel,
            reduce_range=q.reduce_range,
            weight_type=getattr(QuantType, QUANT_TYPES[q.weight_type]),
            nodes_to_exclude=list(q.nodes_to_exclude),
        )
        if q.mode == "dynamic":
            # DefaultTensorType: fused contrib ops (Attention, SkipLayerNormalization) defeat shape inference
            extra = {"WeightSymmetric": q.symmetric_weights, "DefaultTensorType": onnx.TensorProto.FLOAT}
            quantize_dynamic(str(prepared), str(out_path), extra_options=extra, **common)
        else:
            _quantize_static(prepared, out_path, q, common, calibration_texts or [], encoder)
    return out_path


def prepare(fp32_path: Path, prepared: Path) -> None:
    """onnxruntime's pre-processing (shape inference, basic fusions). Symbolic shape inference fails on some
    exports ('Incomplete symbolic shape inference'); ONNX's own shape inference is then enough."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(fp32_path), str(prepared))
    except Exception:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)


def _quantize_static(prepared, out_path, q, common, texts, encoder) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calib = q.calibration
    model = onnx.load(str(prepared), load_external_data=False)
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
    sixteen_bit = q.resolved_activation_type in ("uint16", "int16")
    reader = TextCalibrationReader(input_specs(model), encoder, texts, calib.batch_size)
    extra = {
        "ActivationSymmetric": q.symmetric_activations,
        "WeightSymmetric": q.symmetric_weights,
        "CalibPercentile": calib.percentile,
        "UseQDQContribOps": sixteen_bit and opset < 21,  # 16-bit Q/DQ needs opset 21 or com.microsoft
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
