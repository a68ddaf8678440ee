"""Pre-flight: what in a model will not run on a device, found before any calibration time is spent."""

from __future__ import annotations

from pathlib import Path

import onnx

from edgeq.artifact import load_onnx, node_precisions
from edgeq.targets.profiles import DeviceProfile
from edgeq.targets.target import Target

CONTROL_FLOW = {"Loop", "If", "Scan"}
COMPUTE_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Attention", "LayerNormalization", "Softmax"}


def preflight(model_path: Path, target: Target) -> dict:
    """Problems (the device will refuse or fall back) and notes, for `edgeq inspect MODEL --device ID`."""
    device = target.profile
    model = load_onnx(model_path, load_weights=False)
    problems: list[str] = []
    problems += _shape_problems(model, device)
    problems += _op_problems(model, device)
    problems += _type_problems(model)
    available = target.provider_here
    result = {
        "model": str(model_path),
        "device": device.id,
        "provider": device.execution_provider.name,
        "provider_available_here": available,
        "stand_in": None if available else target.stand_in_kind,
        "problems": problems,
        "ok": not problems,
    }
    if device.is_dpu:
        from edgeq.quantize.pow2 import dpu_compliance

        result["compliance"] = dpu_compliance(model, device.quantization.supported_ops)
        problems += result["compliance"]["violations"]
        result["ok"] = not problems
    if device.coverage:
        from edgeq.targets.coverage import coverage_estimate

        result["coverage"] = coverage_estimate(model_path, device.coverage)
    return result


def _shape_problems(model: onnx.ModelProto, device: DeviceProfile) -> list[str]:
    if not device.quantization.static_shapes:
        return []
    inits = {t.name for t in model.graph.initializer}
    found = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        dynamic = [d for d in dims if not isinstance(d, int) or d <= 0]
        if dynamic:
            found.append(
                f"input '{value.name}' has dynamic dimensions {dynamic}: the device needs static shapes "
                "(export with --batch-size and --sequence-length)"
            )
    return found


def _op_problems(model: onnx.ModelProto, device: DeviceProfile) -> list[str]:
    found = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if device.max_opset and opset > device.max_opset:
        found.append(
            f"opset {opset} is above the device runtime's {device.max_opset}: export with --opset {device.max_opset}"
        )
    flow = sorted({n.op_type for n in model.graph.node if n.op_type in CONTROL_FLOW})
    if flow and not device.control_flow:
        found.append(f"control flow ({', '.join(flow)}) does not run on {device.execution_provider.name}")
    if not device.runs_float:
        precisions = node_precisions(model)
        float_compute = [n for n in model.graph.node if n.op_type in COMPUTE_OPS and precisions.get(n.name) == "fp32"]
        if float_compute and all(p == "fp32" for p in precisions.values()):
            found.append(
                f"the model is not quantized: {device.execution_provider.name} runs quantized models only "
                f"({len(float_compute)} float {'/'.join(sorted({n.op_type for n in float_compute}))} nodes)"
            )
    return found


def _type_problems(model: onnx.ModelProto) -> list[str]:
    doubles = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.DOUBLE]
    return [f"{len(doubles)} float64 initializers (e.g. '{doubles[0]}'): edge EPs take float32"] if doubles else []
