"""Quantize stage: dynamic or static INT8 (16-bit activations too), within the target devices' rules."""

from edgeq.quantize.constraints import check_against_device, quantization_scheme, resolve_op_types
from edgeq.quantize.run import quantize_model

__all__ = ["check_against_device", "quantization_scheme", "quantize_model", "resolve_op_types"]
