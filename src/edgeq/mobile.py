"""The ORT format (.ort) that onnxruntime-mobile loads, made with onnxruntime's own converter."""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path

from edgeq.buildlog import quiet_libraries
from edgeq.errors import StageError


def write_ort_format(model_path: Path, target: Path) -> Path:
    """Convert model_path to the ORT format at `target`, with the 'Runtime' optimization style that mobile EPs
    (NNAPI, CoreML) need: optimizations are recorded and applied on the device after the EP claims its nodes."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory(prefix="edgeq-ort-") as tmp:
        source = Path(tmp) / "model.onnx"
        shutil.copy2(model_path, source)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            quiet_libraries()
            convert_onnx_models_to_ort(
                source, output_dir=Path(tmp) / "out", optimization_styles=[OptimizationStyle.Runtime]
            )
        made = sorted((Path(tmp) / "out").glob("*.ort"))
        if not made:
            raise StageError(f"onnxruntime could not convert '{model_path}' to the ORT format")
        shutil.copy2(made[0], target)
    return target
