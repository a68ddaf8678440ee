"""Check an exported ONNX model against the PyTorch model it came from, on real texts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.text import TextEncoder, feed_for, task_vectors
from edgeq.validate.metrics import compare


def check_export(
    model_dir: Path, onnx_path: Path, task: str, texts: list[str], sequence_length: int, static: bool,
    trust_remote_code: bool = False,
) -> dict:
    """max abs error and cosine of the task output (pooled embedding or logits), ONNX vs PyTorch."""
    import onnxruntime as ort
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if task == "text-classification" else AutoModel
    torch_model = auto.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code).eval()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    encoder = TextEncoder(onnx_path.parent, sequence_length, pad_to_length=static)
    reference, exported = [], []
    batch = session.get_inputs()[0].shape[0]
    step = batch if isinstance(batch, int) else 1
    for start in range(0, len(texts) - step + 1, step):
        encoded = encoder.encode(texts[start : start + step])
        feed = feed_for(session.get_inputs(), encoded)
        with torch.no_grad():
            out = torch_model(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in feed.items()})[0].numpy()
        reference.append(task_vectors(out, encoded["attention_mask"], task))
        exported.append(task_vectors(session.run(None, feed)[0], encoded["attention_mask"], task))
    metrics = compare(np.concatenate(reference), np.concatenate(exported))
    return {"samples": len(np.concatenate(reference)), **metrics}
