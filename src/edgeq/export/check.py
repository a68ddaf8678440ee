"""Check an exported ONNX model against the PyTorch model it came from, on real samples."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np

from edgeq.feeds import run_batch
from edgeq.tasks.fidelity import fidelity


def check_export(
    model_dir: Path,
    onnx_path: Path,
    task,
    samples: list,
    sequence_length: int,
    static: bool,
    trust_remote_code: bool = False,
) -> dict:
    """max abs error and cosine of what the task compares, ONNX vs PyTorch."""
    import onnxruntime as ort
    import torch
    import transformers

    torch_model = (
        getattr(transformers, task.auto_class)
        .from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
        .eval()
    )
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = task.inputs(onnx_path.parent, sequence_length, static)
    batch = session.get_inputs()[0].shape[0]
    step = batch if isinstance(batch, int) else 1
    reference, exported = [], []
    accepted = set(inspect.signature(torch_model.forward).parameters)
    for group in task.batches(samples, inputs, step, whole_batches_only=True):
        outputs = run_batch(session, group)
        names = {i.name for i in session.get_inputs()} & accepted  # a KV cache is for ONNX; PyTorch starts empty
        torch_inputs = {
            k: torch.from_numpy(v.astype(np.int64) if v.dtype.kind in "iu" else v)
            for k, v in group.feed.items()
            if k in names
        }
        if group.mask is not None and group.feed.get("attention_mask", group.mask).ndim != 2:
            # a static decoder's additive [1, 1, N, L + N] mask is for the ONNX graph; PyTorch takes the tokens' mask
            torch_inputs = {
                "input_ids": torch_inputs["input_ids"],
                "attention_mask": torch.from_numpy(group.mask.astype(np.int64)),
            }
        with torch.no_grad():
            produced = torch_model(**torch_inputs)
        torch_outputs = {name: produced[name].numpy() for name in outputs if name in produced}
        reference += task.compared(torch_outputs or {"out": produced[0].numpy()}, group)
        exported += task.compared(outputs, group)
    return {"samples": len(reference), **fidelity(reference, exported)}
