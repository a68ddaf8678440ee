"""Run assembled (in-memory) models on texts: proxy passes on a calibration subset, full evaluations on the
validation texts with latency measured interleaved against FP32."""

from __future__ import annotations

import time

import numpy as np
import onnx

from edgeq.artifact import with_outputs
from edgeq.devices import DeviceProfile
from edgeq.text import TextEncoder, feed_for, task_vectors
from edgeq.validate.metrics import compare
from edgeq.validate.sessions import make_session


class TextRunner:
    """Task vectors (and, on request, named intermediate tensors) of a model over fixed texts, batch 1."""

    def __init__(self, encoder: TextEncoder, texts: list[str], task: str, device: DeviceProfile):
        self.encoded = [encoder.encode([text]) for text in texts]
        self.task, self.device = task, device

    def session(self, model: onnx.ModelProto):
        return make_session(model.SerializeToString(), self.device, spinning=False)

    def vectors(self, model: onnx.ModelProto) -> np.ndarray:
        session = self.session(model)
        out = [self._run(session, e)[0] for e in self.encoded]
        return np.concatenate([task_vectors(o, e["attention_mask"], self.task) for o, e in zip(out, self.encoded)])

    def tensors(self, model: onnx.ModelProto, names: list[str]) -> dict[str, list[np.ndarray]]:
        session = self.session(with_outputs(model, names))
        collected: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for encoded in self.encoded:
            for name, value in zip(names, session.run(names, feed_for(session.get_inputs(), encoded))):
                collected[name].append(value)
        return collected

    @staticmethod
    def _run(session, encoded):
        return session.run(None, feed_for(session.get_inputs(), encoded))


class FullEvaluator(TextRunner):
    """Validation metrics of a candidate against FP32, and its p50 latency ratio measured interleaved."""

    def __init__(self, encoder, texts, task, device, fp32: onnx.ModelProto):
        super().__init__(encoder, texts, task, device)
        self.fp32_session = self.session(fp32)
        self.reference = np.concatenate([
            task_vectors(self._run(self.fp32_session, e)[0], e["attention_mask"], task) for e in self.encoded
        ])  # fmt: skip

    def __call__(self, model: onnx.ModelProto) -> dict:
        session = self.session(model)
        vectors, own, fp32 = [], [], []
        for encoded in self.encoded:
            start = time.perf_counter()
            out = self._run(session, encoded)[0]
            own.append(time.perf_counter() - start)
            start = time.perf_counter()
            self._run(self.fp32_session, encoded)
            fp32.append(time.perf_counter() - start)
            vectors.append(task_vectors(out, encoded["attention_mask"], self.task))
        metrics = compare(self.reference, np.concatenate(vectors), self.task == "text-classification")
        metrics["latency_ratio"] = round(float(np.median(own) / np.median(fp32)), 3)
        return metrics
