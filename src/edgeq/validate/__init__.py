"""Validate stage: run candidates and the FP32 reference on a device's execution provider, compare them."""

from edgeq.validate.metrics import compare, judge
from edgeq.validate.run import validate_models

__all__ = ["compare", "judge", "validate_models"]
