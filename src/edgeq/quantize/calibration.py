"""Feed calibration batches to onnxruntime's calibrators, with a progress bar."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx
from onnxruntime.quantization import CalibrationDataReader

from edgeq.feeds import feed_for
from edgeq.progress import track


def pads_to_length(method: str, static_shapes: bool) -> bool:
    """Histogram calibrators (entropy, percentile) stack every batch into one array, so their batches must share
    one shape: those pad to the full length. MinMax keeps each batch to its longest text."""
    return static_shapes or method != "minmax"


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    from onnx.helper import tensor_dtype_to_string

    inits = {t.name for t in model.graph.initializer}
    types = {
        onnx.TensorProto.INT32: "tensor(int32)",
        onnx.TensorProto.INT64: "tensor(int64)",
        onnx.TensorProto.FLOAT: "tensor(float)",
        onnx.TensorProto.FLOAT16: "tensor(float16)",
    }
    return [
        InputSpec(i.name, types.get(i.type.tensor_type.elem_type, tensor_dtype_to_string(i.type.tensor_type.elem_type)))
        for i in model.graph.input
        if i.name not in inits
    ]


class FeedReader(CalibrationDataReader):
    """Yields one feed dict per calibration batch; onnxruntime reads it once, to its end."""

    def __init__(self, specs: list[InputSpec], feeds: list[dict]):
        self.specs, self.feeds = specs, feeds
        self._iter: Iterator | None = None

    def get_next(self) -> dict | None:
        if self._iter is None:
            self._iter = iter(track(self.feeds, "calibrating", total=len(self.feeds)))
        feed = next(self._iter, None)
        return None if feed is None else feed_for(self.specs, feed)

    def rewind(self) -> None:
        self._iter = None
