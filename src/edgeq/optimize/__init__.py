"""Optimize stage: onnxruntime transformer fusions on the FP32 model, before quantization."""

from edgeq.optimize.fusions import fuse_transformer

__all__ = ["fuse_transformer"]
