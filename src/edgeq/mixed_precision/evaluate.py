"""Run assembled (in-memory) models on samples at every deployment shape: proxy passes on a calibration subset,
full evaluations on the validation samples, and latencies measured interleaved (the models in turn, batch by
batch, on the device's settings with intra-op spinning off)."""

from __future__ import annotations

import math
import time

import numpy as np
import onnx

from edgeq.artifact import with_outputs
from edgeq.devices import DeviceProfile
from edgeq.feeds import feed_for, run_batch, shape_data
from edgeq.validate.run import worst_case

MIN_TIMED_BATCHES = 24  # per shape and model; fewer batches are run again, up to MAX_ROUNDS times
MAX_ROUNDS = 4


class Runner:
    """What the task compares, for a model over fixed samples at each shape (batch size, most tokens)."""

    def __init__(self, task, samples: list, inputs, device: DeviceProfile, shapes: list[tuple[int, int]],
                 whole_batches_only: bool = False):  # fmt: skip
        self.task, self.device = task, device
        self.data = {d.label: d for d in shape_data(task, samples, inputs, shapes, whole_batches_only)}
        self.single = shape_data(task, samples, inputs, [(1, shapes[0][1])], whole_batches_only)[0].batches

    @property
    def labels(self) -> list[str]:
        return list(self.data)

    def session(self, model: onnx.ModelProto):
        from edgeq.validate.sessions import make_session

        return make_session(model.SerializeToString(), self.device, spinning=False)

    def outputs(self, model: onnx.ModelProto) -> dict[str, list[np.ndarray]]:
        session = self.session(model)
        return {label: self._items(session, data.batches) for label, data in self.data.items()}

    def _items(self, session, batches) -> list[np.ndarray]:
        return [item for batch in batches for item in self.task.compared(run_batch(session, batch), batch)]

    def tensors(self, model: onnx.ModelProto, names: list[str]) -> dict[str, list[tuple[np.ndarray, np.ndarray | None]]]:
        """Named intermediate tensors, sample by sample (batch 1), each with its token mask (None for images)."""
        session = self.session(with_outputs(model, names))
        collected: dict[str, list] = {n: [] for n in names}
        for batch in self.single:
            for name, value in zip(names, session.run(names, feed_for(session.get_inputs(), batch.feed))):
                collected[name].append((value, batch.mask))
        return collected

    def latencies(self, models: dict[str, onnx.ModelProto]) -> dict[str, dict[str, float]]:
        """p50 ms of each model at each shape, measured interleaved: {shape: {model: ms}}."""
        sessions = {name: self.session(model) for name, model in models.items()}
        return {label: self._interleaved(sessions, data.batches)[0] for label, data in self.data.items()}

    def _interleaved(self, sessions: dict, batches: list) -> tuple[dict[str, float], dict[str, list]]:
        for session in sessions.values():
            run_batch(session, batches[0])  # warm-up
        timings: dict[str, list[float]] = {name: [] for name in sessions}
        items: dict[str, list] = {name: [] for name in sessions}
        for round_ in range(min(MAX_ROUNDS, math.ceil(MIN_TIMED_BATCHES / len(batches)))):
            for batch in batches:
                for name, session in sessions.items():
                    start = time.perf_counter()
                    outputs = run_batch(session, batch)
                    timings[name].append((time.perf_counter() - start) * 1000)
                    if round_ == 0:
                        items[name] += self.task.compared(outputs, batch)
        return {name: float(np.median(t)) for name, t in timings.items()}, items


class FullEvaluator(Runner):
    """Validation metrics of a candidate against FP32 at every shape (the worst case on top), and its p50
    latency at each shape as a ratio to FP32 and to the baseline (all-lowest) model, measured interleaved."""

    def __init__(self, task, samples, inputs, device, shapes, fp32: onnx.ModelProto, baseline: onnx.ModelProto,
                 whole_batches_only: bool = False):  # fmt: skip
        super().__init__(task, samples, inputs, device, shapes, whole_batches_only)
        self.fixed = {"fp32": self.session(fp32), "baseline": self.session(baseline)}
        self.reference = {label: self._items(self.fixed["fp32"], data.batches) for label, data in self.data.items()}

    def __call__(self, model: onnx.ModelProto) -> dict:
        sessions = {**self.fixed, "candidate": self.session(model)}
        per_shape = {}
        for label, data in self.data.items():
            p50, items = self._interleaved(sessions, data.batches)
            samples = [s for batch in data.batches for s in batch.samples]
            metrics = self.task.metrics(self.reference[label], items["candidate"], samples, data.inputs)
            metrics["latency_ratio"] = round(p50["candidate"] / p50["fp32"], 3)
            metrics["slowdown"] = round(p50["candidate"] / p50["baseline"], 3)
            per_shape[label] = metrics
        worst, worst_shape = worst_case(list(per_shape.values()), list(per_shape))
        return {**worst, "worst_shape": worst_shape, "shapes": per_shape}
