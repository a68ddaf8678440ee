"""Run assembled (in-memory) models on texts at every deployment shape: proxy passes on a calibration subset,
full evaluations on the validation texts, and latencies measured interleaved (the models in turn, batch by
batch, on the device's settings with intra-op spinning off)."""

from __future__ import annotations

import math
import time

import numpy as np
import onnx

from edgeq.artifact import with_outputs
from edgeq.devices import DeviceProfile
from edgeq.text import TextEncoder, feed_for, shape_feeds, shape_label, task_vectors
from edgeq.validate.metrics import compare
from edgeq.validate.run import worst_case

MIN_TIMED_BATCHES = 24  # per shape and model; fewer batches are run again, up to MAX_ROUNDS times
MAX_ROUNDS = 4


class TextRunner:
    """Task vectors of a model over fixed texts at each shape (batch size, most tokens a text)."""

    def __init__(self, encoder: TextEncoder, texts: list[str], task: str, device: DeviceProfile,
                 shapes: list[tuple[int, int]]):  # fmt: skip
        fixed = encoder.pad_to_length
        self.feeds = {shape_label(*shape): shape_feeds(texts, encoder, *shape, whole_batches_only=fixed)
                      for shape in shapes}  # fmt: skip
        self.single = shape_feeds(texts, encoder, 1, shapes[0][1], whole_batches_only=fixed)
        self.task, self.device = task, device

    @property
    def labels(self) -> list[str]:
        return list(self.feeds)

    def session(self, model: onnx.ModelProto):
        from edgeq.validate.sessions import make_session

        return make_session(model.SerializeToString(), self.device, spinning=False)

    def vectors(self, model: onnx.ModelProto) -> dict[str, np.ndarray]:
        session = self.session(model)
        return {label: self._vectors(session, feeds) for label, feeds in self.feeds.items()}

    def _vectors(self, session, feeds) -> np.ndarray:
        return np.concatenate([task_vectors(self._run(session, f)[0], f["attention_mask"], self.task) for f in feeds])

    def tensors(self, model: onnx.ModelProto, names: list[str]) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
        """Named intermediate tensors, text by text (batch 1), each with its attention mask."""
        session = self.session(with_outputs(model, names))
        collected: dict[str, list] = {n: [] for n in names}
        for feed in self.single:
            for name, value in zip(names, session.run(names, feed_for(session.get_inputs(), feed))):
                collected[name].append((value, feed["attention_mask"]))
        return collected

    def latencies(self, models: dict[str, onnx.ModelProto]) -> dict[str, dict[str, float]]:
        """p50 ms of each model at each shape, measured interleaved: {shape: {model: ms}}."""
        sessions = {name: self.session(model) for name, model in models.items()}
        return {label: self._interleaved(sessions, feeds)[0] for label, feeds in self.feeds.items()}

    def _interleaved(self, sessions: dict, feeds: list) -> tuple[dict[str, float], dict[str, list]]:
        for session in sessions.values():
            self._run(session, feeds[0])  # warm-up
        timings: dict[str, list[float]] = {name: [] for name in sessions}
        outputs: dict[str, list] = {name: [] for name in sessions}
        for round_ in range(min(MAX_ROUNDS, math.ceil(MIN_TIMED_BATCHES / len(feeds)))):
            for feed in feeds:
                for name, session in sessions.items():
                    start = time.perf_counter()
                    out = self._run(session, feed)[0]
                    timings[name].append((time.perf_counter() - start) * 1000)
                    if round_ == 0:
                        outputs[name].append(out)
        return {name: float(np.median(t)) for name, t in timings.items()}, outputs

    @staticmethod
    def _run(session, encoded):
        return session.run(None, feed_for(session.get_inputs(), encoded))


class FullEvaluator(TextRunner):
    """Validation metrics of a candidate against FP32 at every shape (the worst case on top), and its p50
    latency at each shape as a ratio to FP32 and to the baseline (all-lowest) model, measured interleaved."""

    def __init__(self, encoder, texts, task, device, shapes, fp32: onnx.ModelProto, baseline: onnx.ModelProto):
        super().__init__(encoder, texts, task, device, shapes)
        self.fixed = {"fp32": self.session(fp32), "baseline": self.session(baseline)}
        self.reference = {label: self._vectors(self.fixed["fp32"], feeds) for label, feeds in self.feeds.items()}

    def __call__(self, model: onnx.ModelProto) -> dict:
        sessions = {**self.fixed, "candidate": self.session(model)}
        per_shape = {}
        for label, feeds in self.feeds.items():
            p50, outputs = self._interleaved(sessions, feeds)
            vectors = np.concatenate([task_vectors(o, f["attention_mask"], self.task)
                                      for o, f in zip(outputs["candidate"], feeds)])  # fmt: skip
            metrics = compare(self.reference[label], vectors, self.task == "text-classification")
            metrics["latency_ratio"] = round(p50["candidate"] / p50["fp32"], 3)
            metrics["slowdown"] = round(p50["candidate"] / p50["baseline"], 3)
            per_shape[label] = metrics
        worst, worst_shape = worst_case(list(per_shape.values()), list(per_shape))
        return {**worst, "worst_shape": worst_shape, "shapes": per_shape}
