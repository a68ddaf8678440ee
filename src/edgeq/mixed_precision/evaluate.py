"""Run assembled (in-memory) models on samples at every deployment shape: proxy passes on a calibration subset,
full evaluations on the validation samples, and latencies measured interleaved (the models in turn, batch by
batch, on the device's settings with intra-op spinning off)."""

from __future__ import annotations

import math
import time

import numpy as np
import onnx

from edgeq.artifact import with_outputs
from edgeq.feeds import feed_for, run_batch, shape_data
from edgeq.targets.target import Target
from edgeq.tasks.judge import worst_case

MIN_TIMED_BATCHES = 24  # per shape and model; fewer batches are run again, up to MAX_ROUNDS times
MIN_TIMED_SECONDS = 2.0  # ... unless the slowest model's timings already add up to this much
MIN_SPREAD = 4  # batches timed in a round at least (all of them when there are fewer)
MAX_ROUNDS = 4


class Runner:
    """What the task compares, for a model over fixed samples at each shape (batch size, most tokens)."""

    def __init__(
        self,
        task,
        samples: list,
        inputs,
        target: Target,
        shapes: list[tuple[int, int]],
        whole_batches_only: bool = False,
        shared: dict | None = None,
    ):
        self.task, self.target = task, target  # the target resolves its runtime once, for every session made here
        self.shared = shared if shared is not None else {}  # id(model) -> session, kept across runners (FP32's)
        self.data = {d.label: d for d in shape_data(task, samples, inputs, shapes, whole_batches_only)}
        self.single = shape_data(task, samples, inputs, [(1, shapes[0][1])], whole_batches_only)[0].batches

    @property
    def labels(self) -> list[str]:
        return list(self.data)

    @property
    def batched_like_first(self) -> list[str]:
        """The shapes after the first that differ from it only in batch size: the same texts cut to the same length.
        A model with no run-time activation scale computes each text of such a batch as it does alone (padding is
        masked), so its outputs there are the first shape's."""
        first = next(iter(self.data.values()))
        return [label for label, data in list(self.data.items())[1:] if data.sequence_length == first.sequence_length]

    def session(self, model: onnx.ModelProto):
        if id(model) in self.shared:
            return self.shared[id(model)]
        return self.target.session(model.SerializeToString(), spinning=False)

    def keep(self, model: onnx.ModelProto, expose: list[str] = ()) -> None:
        """Make one session of `model` and serve it to every runner sharing this one's cache: a real LM's FP32
        session is the largest thing the search holds, and the proxy, the latency model, the island SQNR and every
        full evaluation run FP32. `expose` names intermediate tensors the session can also return (the islands'
        outputs), so no second FP32 session is made to read them; a plain run still fetches the model's own
        outputs only."""
        from onnx.helper import make_empty_tensor_value_info

        declared = [o.name for o in model.graph.output]
        model.graph.output.extend(make_empty_tensor_value_info(n) for n in expose if n not in declared)
        try:
            serialized = model.SerializeToString()
        finally:
            del model.graph.output[len(declared) :]
        session = self.target.session(serialized, spinning=False)
        del serialized
        self.shared[id(model)] = (
            _DeclaredOutputs(session, declared) if len(session.get_outputs()) > len(declared) else session
        )

    def outputs(
        self, model: onnx.ModelProto, reference: dict[str, list] | None = None, labels: list[str] | None = None
    ) -> dict[str, list]:
        """Per shape (all, or `labels`), what the task compares of `model`. Without `reference` (the reference model
        itself): what the task stores of a reference (`summarize`); with it (an earlier `outputs` of the reference):
        each batch paired with it as it is produced (`pair`), so no pass holds more than a batch of a language
        model's logits."""
        session = self.session(model)
        found = {}
        for label, data in self.data.items():
            if labels is not None and label not in labels:
                continue
            items: list = []
            for batch in data.batches:
                produced = self.task.compared(run_batch(session, batch), batch)
                if reference is None:
                    items += self.task.summarize(produced, batch)
                else:
                    items += self.task.pair(reference[label][len(items) : len(items) + len(produced)], produced, batch)
            found[label] = items
        return found

    def each_sample(self, model: onnx.ModelProto, names: list[str]):
        """({name: tensor}, token mask) for one sample at a time (batch 1): for statistics kept as they stream."""
        kept = self.shared.get(id(model))
        session = (
            kept
            if isinstance(kept, _DeclaredOutputs) and kept.exposes(names)
            else self.session(with_outputs(model, names))
        )
        for batch in self.single:
            yield dict(zip(names, session.run(names, feed_for(session.get_inputs(), batch.feed)))), batch.mask

    def latencies(self, models: dict[str, onnx.ModelProto]) -> dict[str, dict[str, float]]:
        """p50 ms of each model at each shape, measured interleaved: {shape: {model: ms}}."""
        sessions = {name: self.session(model) for name, model in models.items()}
        return {
            label: {name: float(np.median(t)) for name, t in self._interleaved(sessions, data.batches)[0].items()}
            for label, data in self.data.items()
        }

    def _interleaved(
        self, sessions: dict, batches: list, compared: tuple[str, str] | None = None
    ) -> tuple[dict, list, list]:
        """ms per session and timed batch, the sessions run in turn on each batch; with `compared` = (reference,
        candidate), also the reference's stored form and the candidate paired with it, batch by batch, from the
        first round (which then runs every batch). Other rounds run an even spread of the batches, as many as make
        MIN_TIMED_SECONDS by the warm-up's time (at least MIN_SPREAD, at most MIN_TIMED_BATCHES), until each session
        has MIN_TIMED_BATCHES timings or the slowest has MIN_TIMED_SECONDS of them, at most MAX_ROUNDS rounds."""
        start = time.perf_counter()
        for session in sessions.values():
            run_batch(session, batches[0])  # warm-up
        warm_ms = 1000 * (time.perf_counter() - start) / len(sessions)
        count = max(MIN_SPREAD, min(MIN_TIMED_BATCHES, math.ceil(1000 * MIN_TIMED_SECONDS / max(warm_ms, 1e-3))))
        timings: dict[str, list[float]] = {name: [] for name in sessions}
        reference, candidate = [], []
        for round_ in range(MAX_ROUNDS):
            for batch in batches if (round_ == 0 and compared) else spread(batches, count):
                produced = {}
                for name, session in sessions.items():
                    start = time.perf_counter()
                    outputs = run_batch(session, batch)
                    timings[name].append((time.perf_counter() - start) * 1000)
                    if round_ == 0 and compared and name in compared:
                        produced[name] = self.task.compared(outputs, batch)
                if produced:
                    reference += self.task.summarize(produced[compared[0]], batch)
                    candidate += self.task.pair(produced[compared[0]], produced[compared[1]], batch)
            if (
                all(len(t) >= MIN_TIMED_BATCHES for t in timings.values())
                or max(sum(t) for t in timings.values()) >= 1000 * MIN_TIMED_SECONDS
            ):
                break
        return timings, reference, candidate

    def paired(self, session, batches: list, reference: list) -> list:
        """The candidate's outputs on every batch, paired with the reference's stored ones."""
        found: list = []
        for batch in batches:
            produced = self.task.compared(run_batch(session, batch), batch)
            found += self.task.pair(reference[len(found) : len(found) + len(produced)], produced, batch)
        return found


def paired_ratio(times: list[float], reference: list[float]) -> float:
    """The median of per-batch time ratios: each batch timed for both models back to back, so batches of other
    lengths do not widen the spread as they do a ratio of two medians."""
    return round(float(np.median(np.array(times) / np.array(reference))), 3)


def spread(batches: list, count: int) -> list:
    """`count` batches spread evenly over the list (all of them when there are no more)."""
    if len(batches) <= count:
        return batches
    return [batches[round(i * (len(batches) - 1) / (count - 1))] for i in range(count)]


class _DeclaredOutputs:
    """A session whose model also outputs intermediate tensors: a plain run fetches the declared outputs only."""

    def __init__(self, session, declared: list[str]):
        self.session, self.declared = session, declared

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return [o for o in self.session.get_outputs() if o.name in self.declared]

    def exposes(self, names: list[str]) -> bool:
        return set(names) <= {o.name for o in self.session.get_outputs()}

    def run(self, names, feed):
        return self.session.run(names or self.declared, feed)


class FullEvaluator(Runner):
    """Validation metrics of a candidate against FP32 at every shape (the worst case on top), and its p50
    latency at each shape as a ratio to FP32 and to the baseline (all-lowest) model, measured interleaved. An
    encoder's FP32 outputs are computed once and kept (a vector a text), so each candidate runs every batch once
    for its fidelity and is timed beside FP32 and the baseline on a spread of the batches; a language model's
    logits are too large to keep, so FP32 runs beside every candidate and is paired batch by batch."""

    def __init__(
        self,
        task,
        samples,
        inputs,
        target: Target,
        shapes,
        fp32: onnx.ModelProto,
        baseline: onnx.ModelProto,
        whole_batches_only: bool = False,
        shared: dict | None = None,
    ):
        super().__init__(task, samples, inputs, target, shapes, whole_batches_only, shared)
        self.fixed = {"fp32": self.session(fp32), "baseline": self.session(baseline)}
        self.reference = None if task.generates else self.outputs(fp32)

    def __call__(self, model: onnx.ModelProto) -> dict:
        sessions = {**self.fixed, "candidate": self.session(model)}
        per_shape = {}
        for label, data in self.data.items():
            if self.reference is None:
                timings, reference, candidate = self._interleaved(sessions, data.batches, ("fp32", "candidate"))
            else:
                reference, candidate = (
                    self.reference[label],
                    self.paired(sessions["candidate"], data.batches, self.reference[label]),
                )
                timings = self._interleaved(sessions, data.batches)[0]
            samples = [s for batch in data.batches for s in batch.samples]
            metrics = self.task.metrics(reference, candidate, samples, data.inputs)
            metrics["latency_ratio"] = paired_ratio(timings["candidate"], timings["fp32"])
            metrics["slowdown"] = paired_ratio(timings["candidate"], timings["baseline"])
            per_shape[label] = metrics
        worst, worst_shape = worst_case(list(per_shape.values()), list(per_shape))
        return {**worst, "worst_shape": worst_shape, "shapes": per_shape}
