"""Export a local Hugging Face model folder to ONNX with optimum-onnx, optionally with fixed shapes."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import warnings
from pathlib import Path

from edgeq.errors import ModelError, StageError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def export_onnx(
    model_dir: Path,
    out_dir: Path,
    task: str,
    opset: int,
    batch_size: int | None = None,
    sequence_length: int | None = None,
    trust_remote_code: bool = False,
    decoder: str = "auto",
    kv_cache_length: int | None = None,
) -> Path:
    """Write out_dir/model.onnx plus config.json and tokenizer files; return the model path. A Llama-family decoder
    at dynamic shapes is written as onnxruntime-genai's fused graph (`decoder` "auto" or "fused"), anything else
    through optimum's traced export; `decoder` "static" writes an NPU's prefill/decode pair (export/htp_decoder.py)."""
    if decoder == "static":
        from edgeq.artifact import copy_companions
        from edgeq.export.htp_decoder import export_htp_decoder

        check_static_decoder(model_dir, task)
        model_path = export_htp_decoder(model_dir, out_dir, sequence_length, kv_cache_length, max(opset, 21))["prefill"]
        copy_companions(model_dir, out_dir)
        return model_path
    if uses_fused_decoder(model_dir, task, decoder, fixed=bool(batch_size or sequence_length)):
        from edgeq.artifact import copy_companions
        from edgeq.export.decoder import export_decoder

        model_path = export_decoder(model_dir, out_dir / "model.onnx", opset)
        copy_companions(model_dir, out_dir)
        return model_path
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the folder is local: never reach for the hub
    from optimum.exporters.onnx import main_export

    check_supported(model_dir, task)
    _quiet_libraries()
    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log):
            warnings.simplefilter("ignore")
            main_export(
                str(model_dir),
                output=str(out_dir),
                task=task,
                opset=opset,
                do_validation=False,
                library_name="transformers",
                trust_remote_code=trust_remote_code,
                local_files_only=True,
            )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StageError(f"export of '{model_dir}' failed: {first}", "Is the model's architecture supported?") from exc
    model_path = out_dir / "model.onnx"
    for name in TOKENIZER_FILES:  # optimum copies these; make sure the tokenizer travels with the model
        if not (out_dir / name).exists() and (model_dir / name).exists():
            shutil.copy2(model_dir / name, out_dir / name)
    _gemm_as_matmul(model_path)
    if batch_size or sequence_length:
        fix_shapes(model_path, batch_size, sequence_length)
    return model_path


def check_static_decoder(model_dir: Path, task: str) -> None:
    """A ModelError when the static pair cannot be written (not a language model, or not of the Llama family)."""
    from edgeq.export.decoder import unsupported

    reason = "it is not a language model" if task != "text-generation-with-past" else unsupported(model_dir)
    if reason:
        raise ModelError(
            f"export.decoder 'static' cannot be written for '{model_dir}': {reason}",
            "The static pair is written for Llama, Mistral and Qwen2 language models",
        )


def uses_fused_decoder(model_dir: Path, task: str, decoder: str, fixed: bool) -> bool:
    """Whether the export writes the fused decoder graph; a ModelError when `fused` was asked for and cannot be."""
    from edgeq.export.decoder import unsupported

    if decoder == "traced" or task != "text-generation-with-past":
        return False
    reason = "fixed shapes (the fused graph's attention takes a growing cache)" if fixed else unsupported(model_dir)
    if reason and decoder == "fused":
        raise ModelError(
            f"export.decoder 'fused' cannot be written for '{model_dir}': {reason}",
            "Use export.decoder: traced (optimum's export), or auto",
        )
    return reason is None


def _gemm_as_matmul(model_path: Path) -> None:
    import onnx

    from edgeq.artifact import external_files
    from edgeq.export.gemm import fold_weight_transposes, gemm_to_matmul

    model = onnx.load(str(model_path))
    if gemm_to_matmul(model) + fold_weight_transposes(model):
        external = bool(external_files(onnx.load(str(model_path), load_external_data=False)))
        onnx.save(model, str(model_path), save_as_external_data=external, location=f"{model_path.name}.data")


def check_supported(model_dir: Path, task: str) -> None:
    """A ModelError naming the architecture and the supported ones, before optimum fails with a traceback."""
    from optimum.exporters.tasks import TasksManager

    from edgeq.model_folder import config_of

    model_type = str(config_of(model_dir).get("model_type", ""))
    supported = sorted(
        m
        for m in TasksManager._SUPPORTED_MODEL_TYPE
        if task in TasksManager.get_supported_tasks_for_model_type(m, exporter="onnx", library_name="transformers")
    )
    spellings = {model_type, model_type.replace("_", "-"), model_type.replace("-", "_")}
    if model_type and not spellings & set(supported):
        raise ModelError(
            f"the ONNX exporter (optimum) has no {task} export for model_type '{model_type}'",
            f"Supported: {', '.join(supported)}",
        )


def fix_shapes(model_path: Path, batch_size: int | None, sequence_length: int | None) -> None:
    """Replace the batch/sequence dim params of every input with fixed sizes (static shapes for NPUs)."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    model = onnx.load(str(model_path))
    for param, value in (("batch_size", batch_size), ("sequence_length", sequence_length)):
        if value:
            make_dim_param_fixed(model.graph, param, value)
    fix_output_shapes(model)
    onnx.save(model, str(model_path))


def _quiet_libraries() -> None:
    for name in ("transformers", "optimum", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
