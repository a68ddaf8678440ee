"""Check a quantization config against a device's rules before any time is spent on calibration."""

from __future__ import annotations

from edgeq.errors import ConstraintError
from edgeq.recipe.schema import QuantizationConfig
from edgeq.targets.profiles import DeviceProfile


def check_against_device(q: QuantizationConfig, device: DeviceProfile, static_shapes: bool) -> None:
    """Raise ConstraintError naming the recipe key and the device rule the config breaks."""
    rules = device.quantization

    def refuse(key: str, what: str, hint: str) -> None:
        raise ConstraintError(f"{key}: device '{device.id}' {what}", hint)

    if q.mode not in rules.modes:
        refuse("quantization.mode", f"cannot run {q.mode} quantization", f"Use one of: {', '.join(rules.modes)}")
    if q.mode == "static":
        if q.resolved_format not in rules.formats:
            refuse("quantization.format", f"does not accept {q.resolved_format}", f"Use: {', '.join(rules.formats)}")
        if q.resolved_activation_type not in rules.activation_types:
            refuse(
                "quantization.activation_type",
                f"does not allow {q.resolved_activation_type} activations",
                f"Use: {', '.join(rules.activation_types)}",
            )
        if rules.symmetric_activations and not q.symmetric_activations:
            refuse("quantization.symmetric_activations", "needs symmetric activations", "Set it to true")
    if q.weight_type not in rules.weight_types:
        refuse(
            "quantization.weight_type",
            f"does not allow {q.weight_type} weights",
            f"Use: {', '.join(rules.weight_types)}",
        )
    if q.per_channel and not rules.per_channel:
        refuse("quantization.per_channel", "allows only per-tensor weight scales", "Set per_channel: false")
    if rules.symmetric_weights and not q.symmetric_weights:
        refuse("quantization.symmetric_weights", "needs symmetric weights", "Set it to true")
    if rules.static_shapes and not static_shapes:
        refuse(
            "export.sequence_length", "needs static input shapes", "Set export.batch_size and export.sequence_length"
        )
    if rules.power_of_two_scales and (
        q.mode != "static"
        or q.per_channel
        or not q.symmetric_activations
        or not q.symmetric_weights
        or q.resolved_activation_type != "int8"
    ):
        refuse(
            "quantization",
            "needs XINT8: static, int8 activations, symmetric, per-tensor (power-of-two scales)",
            "Set mode: static, activation_type: int8, per_channel: false, symmetric_activations: true",
        )
    if q.op_types and rules.supported_ops is not None:
        unsupported = sorted(set(q.op_types) - set(rules.supported_ops))
        if unsupported:
            refuse(
                "quantization.op_types",
                f"does not run {', '.join(unsupported)} quantized",
                f"It runs: {', '.join(rules.supported_ops)}",
            )


def resolve_op_types(q: QuantizationConfig, devices: list[DeviceProfile]) -> list[str] | None:
    """The recipe's op types, else the intersection of the devices' supported ops (None: onnxruntime's default)."""
    if q.op_types:
        return list(q.op_types)
    supported = [set(d.quantization.supported_ops) for d in devices if d.quantization.supported_ops is not None]
    if not supported:
        return None
    return sorted(set.intersection(*supported))


def quantization_scheme(devices: list[DeviceProfile]) -> str:
    """The one static-quantization scheme all targets accept (a recipe cannot serve two)."""
    schemes = {d.quantization.scheme for d in devices}
    if len(schemes) > 1:
        names = ", ".join(f"{d.id} ({d.quantization.scheme})" for d in devices)
        raise ConstraintError(
            f"targets: the devices need different quantization schemes: {names}", "Write one recipe per scheme"
        )
    return schemes.pop()
