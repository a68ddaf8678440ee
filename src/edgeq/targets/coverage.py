"""How much of a model a mobile EP (NNAPI, CoreML) would take, estimated with onnxruntime's mobile helpers.

This is an estimate from op types and shapes, not a run: NNAPI and CoreML cannot run on this machine. The
report labels it so, and the numerics are checked on the CPU EP."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

HELPERS = {
    "nnapi": ("NNAPI", lambda m, fixed, checker: checker.check_nnapi_partitions(m, fixed)),
    "coreml-mlprogram": (
        "CoreML (MLProgram)",
        lambda m, fixed, checker: checker.check_coreml_partitions(m, fixed, "coreml_supported_mlprogram_ops.md"),
    ),
    "coreml-neuralnetwork": (
        "CoreML (NeuralNetwork)",
        lambda m, fixed, checker: checker.check_coreml_partitions(m, fixed, "coreml_supported_neuralnetwork_ops.md"),
    ),
}


def coverage_estimate(model_path: Path, kind: str) -> dict:
    import onnx
    from onnxruntime.tools.mobile_helpers import usability_checker as checker

    name, check = HELPERS[kind]
    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    with contextlib.redirect_stdout(io.StringIO()):
        logging.getLogger().setLevel(logging.ERROR)
        info = check(model, True, checker)
    return {
        "estimate": True,
        "ep": name,
        "nodes": info.num_nodes,
        "supported_nodes": info.num_supported_nodes,
        "share": round(info.num_supported_nodes / max(info.num_nodes, 1), 4),
        "partitions": info.num_partitions,
        "unsupported_ops": sorted(info.unsupported_ops),
        "nodes_unsupported_due_to_op": info.nodes_unsupported_due_to_op,
        "nodes_unsupported_due_to_dynamic_shape": info.nodes_unsupported_due_to_dynamic_input,
        "suitability": info.suitability().name,
        "caveats": info.supported_ops_checker.get_caveats(),
    }
