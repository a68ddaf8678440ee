"""Feed tokenized calibration texts to onnxruntime's calibrators, with a progress bar."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx
from onnxruntime.quantization import CalibrationDataReader

from edgeq.progress import track
from edgeq.text import TextEncoder, batches, feed_for


def calibration_encoder(tokenizer_dir, method: str, sequence_length: int, static_shapes: bool) -> TextEncoder:
    """Histogram calibrators (entropy, percentile) stack every batch into one array, so their batches must
    share one shape: pad those to the full length. MinMax keeps each batch to its longest text."""
    return TextEncoder(tokenizer_dir, sequence_length, pad_to_length=static_shapes or method != "minmax")


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    inits = {t.name for t in model.graph.initializer}
    return [
        InputSpec(i.name, "tensor(int32)" if i.type.tensor_type.elem_type == onnx.TensorProto.INT32 else "tensor(int64)")
        for i in model.graph.input
        if i.name not in inits
    ]


class TextCalibrationReader(CalibrationDataReader):
    """Yields one feed dict per batch of texts; onnxruntime reads it once, to its end."""

    def __init__(self, specs: list[InputSpec], encoder: TextEncoder, texts: list[str], batch_size: int):
        self.specs = specs
        self.encoder = encoder
        self.text_batches = [b for b in batches(texts, batch_size) if len(b) == batch_size] or [texts[:batch_size]]
        self._iter: Iterator | None = None

    def get_next(self) -> dict | None:
        if self._iter is None:
            self._iter = iter(track(self.text_batches, "calibrating", total=len(self.text_batches)))
        batch = next(self._iter, None)
        return None if batch is None else feed_for(self.specs, self.encoder.encode(batch))

    def rewind(self) -> None:
        self._iter = None
