"""Turn texts into model inputs with the model's own tokenizer.json (the `tokenizers` library: no torch,
no transformers), and model outputs into the vectors edgeq compares (mean-pooled embeddings or logits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.errors import ModelError

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class TextEncoder:
    """Tokenizes texts to fixed or longest-in-batch length, as int64 numpy arrays."""

    def __init__(self, tokenizer_dir: Path, sequence_length: int, pad_to_length: bool = False):
        from tokenizers import Tokenizer

        file = Path(tokenizer_dir) / "tokenizer.json"
        if not file.is_file():
            raise ModelError(
                f"no tokenizer.json in '{tokenizer_dir}'", "Export with `edgeq export` or pass --tokenizer DIR"
            )
        self.tokenizer_dir, self.sequence_length, self.pad_to_length = Path(tokenizer_dir), sequence_length, pad_to_length
        self.tokenizer = Tokenizer.from_file(str(file))
        self.tokenizer.enable_truncation(max_length=sequence_length)
        pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        self.tokenizer.enable_padding(pad_id=pad_id, length=sequence_length if pad_to_length else None)
        self.vocab_size = self.tokenizer.get_vocab_size()

    def for_length(self, sequence_length: int) -> TextEncoder:
        """The same tokenizer truncating (and, for a fixed-shape model, padding) to `sequence_length`."""
        if sequence_length == self.sequence_length:
            return self
        return TextEncoder(self.tokenizer_dir, sequence_length, self.pad_to_length)

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }


def batches(texts: list[str], batch_size: int) -> list[list[str]]:
    return [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]


def shape_label(batch_size: int, sequence_length: int) -> str:
    """How a deployment shape is named in reports: `b32-s128` = batches of 32, at most 128 tokens a text."""
    return f"b{batch_size}-s{sequence_length}"


def shape_feeds(texts: list[str], encoder: TextEncoder, batch_size: int, sequence_length: int,
                whole_batches_only: bool = False) -> list[dict[str, np.ndarray]]:  # fmt: skip
    """The texts as model inputs in batches of `batch_size`, each padded to its longest text (or to the fixed
    length). A model with a fixed batch size takes whole batches only (at least one)."""
    encoder = encoder.for_length(sequence_length)
    groups = batches(texts, batch_size)
    if whole_batches_only:
        groups = [g for g in groups if len(g) == batch_size] or [(texts * batch_size)[:batch_size]]
    return [encoder.encode(group) for group in groups]


def feed_for(input_specs, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Select and cast the encoded arrays the session needs. `input_specs` are onnxruntime NodeArg objects."""
    feed = {}
    for spec in input_specs:
        if spec.name not in encoded:
            raise ModelError(
                f"model input '{spec.name}' is not a text input ({', '.join(TEXT_INPUTS)})",
                "edgeq validates text models; profile other models with `edgeq profile`",
            )
        dtype = np.int32 if spec.type == "tensor(int32)" else np.int64
        feed[spec.name] = encoded[spec.name].astype(dtype, copy=False)
    return feed


def task_vectors(first_output: np.ndarray, attention_mask: np.ndarray, task: str) -> np.ndarray:
    """One vector per input: mean-pooled token states for feature extraction, logits for classification."""
    out = np.asarray(first_output, dtype=np.float32)
    if task == "feature-extraction" and out.ndim == 3:
        mask = attention_mask[..., None].astype(np.float32)
        return (out * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)
    return out.reshape(out.shape[0], -1)
