"""Run assembled (in-memory) models on samples at every deployment shape: proxy passes on a calibration subset,
full evaluations on the validation samples, and latencies measured interleaved (the models in turn, batch by
batch, on the device's settings with intra-op spinning off)."""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx

from edgeq.artifact import with_outputs
from edgeq.feeds import feed_for, run_batch, shape_data
from edgeq.targets.runtime import CPU_EP
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
        self.workers = concurrent_workers(task, target)
        self.reused_batched = 0  # shapes whose items were the first shape's, checked on their first batch

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
        found: dict[str, list] = {}
        for label, data in self.data.items():
            if labels is None or label in labels:
                found[label] = self._shape_items(session, label, data, reference, found)
        return found

    def _shape_items(self, session, label: str, data, reference: dict | None, found: dict) -> list:
        """One shape's items. A shape that batches the first shape's texts, cut alike, is not run past its first
        batch when that batch gives exactly the first shape's items: the model computes each text of a padded batch
        as it does alone (FP32, or a static INT8 model: no scale taken from the batch), so the first shape's items
        are its items, bit for bit."""
        first = self.labels[0]
        check = label in self.batched_like_first and first in found and self._same_texts(first, label)
        items: list = []
        for batch, outputs in zip(data.batches, self.run_each(session, data.batches)):
            produced = self.task.compared(outputs, batch)
            if reference is None:
                items += self.task.summarize(produced, batch)
            else:
                items += self.task.pair(reference[label][len(items) : len(items) + len(produced)], produced, batch)
            if check:
                if identical(items, found[first][: len(items)]):
                    self.reused_batched += 1
                    return list(found[first])
                check = False
        return items

    def _same_texts(self, first: str, label: str) -> bool:
        def texts(data) -> list:
            return [sample for batch in data.batches for sample in batch.samples]

        return texts(self.data[first]) == texts(self.data[label])

    def each_sample(self, model: onnx.ModelProto, names: list[str]):
        """({name: tensor}, token mask) for one sample at a time (batch 1): for statistics kept as they stream."""
        kept = self.shared.get(id(model))
        session = (
            kept
            if isinstance(kept, _DeclaredOutputs) and kept.exposes(names)
            else self.session(with_outputs(model, names))
        )

        def run(batch) -> list:
            return session.run(names, feed_for(session.get_inputs(), batch.feed))

        for batch, found in zip(self.single, in_order(run, self.single, self.workers)):  # batches of one text
            yield dict(zip(names, found)), batch.mask

    def run_each(self, session, batches: list) -> Iterator[dict]:
        """The session's outputs on each batch, in order; batches of one text `workers` at a time."""
        workers = self.workers if all(len(batch.samples) == 1 for batch in batches) else 1
        return in_order(lambda batch: run_batch(session, batch), batches, workers)

    def latencies(self, models: dict[str, onnx.ModelProto]) -> dict[str, dict[str, float]]:
        """p50 ms of each model at each shape, measured interleaved: {shape: {model: ms}}."""
        sessions = {name: self.session(model) for name, model in models.items()}
        return {
            label: {name: float(np.median(t)) for name, t in self._interleaved(sessions, data.batches).items()}
            for label, data in self.data.items()
        }

    def _interleaved(self, sessions: dict, batches: list) -> dict[str, list[float]]:
        """ms per session and timed batch, the sessions run in turn on each batch. Each round runs an even spread of
        the batches, as many as make MIN_TIMED_SECONDS by the warm-up's time (at least MIN_SPREAD, at most
        MIN_TIMED_BATCHES), until each session has MIN_TIMED_BATCHES timings or the slowest has MIN_TIMED_SECONDS of
        them, at most MAX_ROUNDS rounds."""
        start = time.perf_counter()
        for session in sessions.values():
            run_batch(session, batches[0])  # warm-up
        warm_ms = 1000 * (time.perf_counter() - start) / len(sessions)
        count = max(MIN_SPREAD, min(MIN_TIMED_BATCHES, math.ceil(1000 * MIN_TIMED_SECONDS / max(warm_ms, 1e-3))))
        timings: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(MAX_ROUNDS):
            for batch in spread(batches, count):
                for name, session in sessions.items():
                    start = time.perf_counter()
                    run_batch(session, batch)
                    timings[name].append((time.perf_counter() - start) * 1000)
            if (
                all(len(t) >= MIN_TIMED_BATCHES for t in timings.values())
                or max(sum(t) for t in timings.values()) >= 1000 * MIN_TIMED_SECONDS
            ):
                break
        return timings


def concurrent_workers(task, target: Target) -> int:
    """How many single-text batches a fidelity pass (not a timing) runs at once on one session. On this host's CPU
    EP, an encoder's: one per core the device's threads use. With intra-op spinning off, MiniLM at batch 1 ran no
    faster on 2 threads than on 1 (3.5 ms a 16-token text, 2 cores), and two calls at once on the 2-thread session
    ran 1.5x as fast, with bit-identical outputs; a padded batch of 32 keeps the session's threads busy, so it runs
    alone. A language model (its logits are large), an emulator or a stand-in: one at a time."""
    runtime = target.runtime
    if task.generates or runtime.provider != CPU_EP or runtime.in_runner:
        return 1
    return max(1, min(target.profile.threads or 1, os.cpu_count() or 1))


def identical(a, b) -> bool:
    """Two items lists (arrays, numbers, or lists, tuples and dicts of them) equal bit for bit."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return a == b


def in_order(run: Callable, items: Iterable, workers: int) -> Iterator:
    """run(item) for each item, yielded in order; with workers > 1, that many run at once (onnxruntime's Run is
    thread-safe and releases the GIL), a few results ahead at most."""
    if workers < 2:
        yield from (run(item) for item in items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(run, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


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
    """Validation metrics of a candidate against FP32 at every shape (the worst case on top); and, for the chosen
    one, its p50 latency at each shape as a ratio to FP32 and to the baseline (all-lowest) model, measured
    interleaved. An encoder's FP32 outputs are computed once and kept (a vector a text), so each candidate runs
    every batch once for its fidelity; a language model's logits are too large to keep, so FP32 runs beside every
    candidate and is paired batch by batch. Only the chosen candidate is timed: no other's time decides anything."""

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
        """Fidelity at every shape, the worst case on top, and the shape each worst value came from."""
        if self.reference is None:
            candidate = self.session(model)
            pairs = {label: self.beside_fp32(candidate, data.batches) for label, data in self.data.items()}
        else:
            items = self.outputs(model, self.reference)
            pairs = {label: (self.reference[label], items[label]) for label in self.data}
        per_shape = {
            label: self.task.metrics(*pairs[label], [s for b in data.batches for s in b.samples], data.inputs)
            for label, data in self.data.items()
        }
        return with_worst_case(per_shape)

    def beside_fp32(self, candidate, batches: list) -> tuple[list, list]:
        """FP32's stored form and the candidate paired with it, FP32 run beside it batch by batch."""
        reference: list = []
        paired: list = []
        for batch in batches:
            produced = self.task.compared(run_batch(self.fixed["fp32"], batch), batch)
            reference += self.task.summarize(produced, batch)
            paired += self.task.pair(produced, self.task.compared(run_batch(candidate, batch), batch), batch)
        return reference, paired

    def latency(self, model: onnx.ModelProto, against: list[str]) -> dict[str, dict[str, float]]:
        """Per shape, the model's p50 time as a ratio to the baseline's (`slowdown`) and to FP32's
        (`latency_ratio`), as `against` asks ("baseline", "fp32"), the models timed in turn batch by batch."""
        if not against:
            return {}
        sessions = {"candidate": self.session(model), **{name: self.fixed[name] for name in against}}
        named = {"baseline": "slowdown", "fp32": "latency_ratio"}
        found = {}
        for label, data in self.data.items():
            timings = self._interleaved(sessions, data.batches)
            found[label] = {named[name]: paired_ratio(timings["candidate"], timings[name]) for name in against}
        return found


def with_worst_case(per_shape: dict[str, dict]) -> dict:
    """Metrics per shape with the worst value of each on top, and the shape it came from."""
    worst, worst_shape = worst_case(list(per_shape.values()), list(per_shape))
    return {**worst, "worst_shape": worst_shape, "shapes": per_shape}
