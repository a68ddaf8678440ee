"""Select and cast the arrays a session needs from what a task encoded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeq.errors import ModelError

DTYPES = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(bool)": np.bool_,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
}


def feed_for(input_specs, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's declared inputs, from `encoded`, in the types it declares. `input_specs` are onnxruntime
    NodeArg objects (or anything with .name and .type)."""
    feed = {}
    for spec in input_specs:
        if spec.name not in encoded:
            raise ModelError(
                f"model input '{spec.name}' is not one this task feeds ({', '.join(encoded)})",
                "Check model.task, or profile the model with `edgeq profile`",
            )
        feed[spec.name] = encoded[spec.name].astype(DTYPES.get(spec.type, encoded[spec.name].dtype), copy=False)
    return feed


@dataclass
class ShapeData:
    """Samples encoded for one deployment shape."""

    label: str
    batch_size: int
    sequence_length: int
    inputs: object  # the task's input maker at this length (TextInputs or ImageInputs)
    batches: list
    follow_ups: int | None = None  # at most this many samples get the task's follow-ups (None: the task's count)


def shape_data(
    task,
    samples: list,
    inputs,
    shapes: list[tuple[int, int]],
    whole_batches_only: bool = False,
    follow_ups: int | None = None,
) -> list[ShapeData]:
    """The samples as batches at every (batch size, most tokens) shape; a model with a fixed batch size takes
    whole batches only; `follow_ups` bounds the samples that get the task's follow-ups."""
    found = []
    for batch_size, sequence_length in shapes:
        at_length = inputs.for_length(sequence_length)
        batches = task.batches(samples, at_length, batch_size, whole_batches_only or inputs.pad_to_length)
        found.append(
            ShapeData(
                task.shape_label(batch_size, sequence_length),
                batch_size,
                sequence_length,
                at_length,
                batches,
                follow_ups,
            )
        )
    return found


def run_batch(session, batch) -> dict[str, np.ndarray]:
    """The session's outputs on one batch, by output name."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed_for(session.get_inputs(), batch.feed))))
