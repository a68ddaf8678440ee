"""Export stage: a Hugging Face model folder -> ONNX (optimum-onnx), checked against PyTorch.

torch and transformers are imported inside the functions that need them, never at import time."""

from edgeq.export.hf import export_onnx
from edgeq.export.source import resolve_source

__all__ = ["export_onnx", "resolve_source"]
