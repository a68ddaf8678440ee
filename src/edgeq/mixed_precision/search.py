"""Choose each island's precision under a budget, with few full evaluations.

1. Proxy scores on a small calibration subset: the SQNR of each island's output in the all-lowest model
   (one pass, as onnxruntime's qdq_loss_debug does per tensor), and, per island and higher candidate, the
   gain in cosine when only that island is promoted (G·(C-1) passes).
2. The ordered list of configurations: single promotions sorted by gain per byte, cumulated; configurations
   over the size ceiling are dropped (size is exact, computed from the candidates).
3. Bisection of that list with the real metric on the validation texts: the first and last configuration,
   then ⌈log₂K⌉ more, stepping forward where the metric is not monotone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from edgeq.mixed_precision.assemble import assemble
from edgeq.mixed_precision.evaluate import TextRunner
from edgeq.mixed_precision.islands import LADDER, Island
from edgeq.progress import say, track
from edgeq.validate.metrics import cosines

@dataclass
class Budget:
    min_cosine_mean: float | None = None
    min_cosine_min: float | None = None
    min_nn_agreement: float | None = None
    max_size_ratio: float | None = None
    max_latency_ratio: float | None = None

    def fidelity_failures(self, metrics: dict) -> list[str]:
        failures = []
        if self.min_cosine_mean is not None and metrics["cosine_mean"] < self.min_cosine_mean:
            failures.append(f"cosine_mean {metrics['cosine_mean']:.4f} < {self.min_cosine_mean}")
        if self.min_cosine_min is not None and metrics["cosine_min"] < self.min_cosine_min:
            failures.append(f"cosine_min {metrics['cosine_min']:.4f} < {self.min_cosine_min}")
        if self.min_nn_agreement is not None and metrics.get("nn_agreement", 0.0) < self.min_nn_agreement:
            failures.append(f"nn_agreement {metrics.get('nn_agreement')} < {self.min_nn_agreement}")
        return failures


@dataclass
class Step:
    island: str
    to: str
    gain: float
    size_cost: int


@dataclass
class SearchResult:
    assignment: dict[str, str]
    chosen_index: int
    configurations: list[dict]
    evaluations: list[dict]
    scores: dict[str, dict]
    proxy_passes: int
    full_evaluations: int
    budget_met: bool
    budget_status: dict[str, bool | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def model_size(fp32_size: int, islands: list[Island], assignment: dict[str, str]) -> int:
    """Bytes of the assembled model, from the FP32 size and the candidates' weight sizes."""
    return fp32_size + sum(i.candidates[assignment[i.name]].size_bytes - i.candidates["fp32"].size_bytes
                           for i in islands)  # fmt: skip


def search(fp32: onnx.ModelProto, fp32_size: int, islands: list[Island], ladder: list[str], budget: Budget,
           proxy: TextRunner, full: Callable[[onnx.ModelProto], dict]) -> SearchResult:  # fmt: skip
    """`proxy` runs models on the proxy texts; `full(model)` gives validation metrics (and latency_ratio)."""
    started = time.perf_counter()
    lowest = {i.name: _rungs(i, ladder)[0] for i in islands}
    scores, passes = proxy_scores(fp32, islands, ladder, lowest, proxy)
    steps = ordered_steps(islands, ladder, lowest, scores)
    configurations = cumulative(lowest, steps, fp32_size, islands, budget)
    say(f"  mixed precision: {len(islands)} islands, {passes} proxy passes, {len(configurations)} configurations")
    evaluations: list[dict] = []

    def evaluate(index: int) -> bool:
        metrics = full(assemble(fp32, islands, configurations[index]["assignment"]))
        failures = budget.fidelity_failures(metrics)
        evaluations.append({"configuration": index, "metrics": metrics, "passed": not failures, "failures": failures})
        return not failures

    chosen, notes = bisect(len(configurations), evaluate)
    fidelity = next(e for e in evaluations if e["configuration"] == chosen)["passed"]
    latency_note = _latency_check(budget, evaluations, chosen)
    notes += [latency_note] if latency_note else []
    status = {
        "fidelity": fidelity,
        "size": None if budget.max_size_ratio is None else True,  # configurations over the ceiling were dropped
        "latency": None if budget.max_latency_ratio is None else latency_note is None,
    }
    return SearchResult(
        assignment=configurations[chosen]["assignment"], chosen_index=chosen,
        configurations=[{k: v for k, v in c.items() if k != "assignment"} for c in configurations],
        evaluations=evaluations, scores=scores, proxy_passes=passes, full_evaluations=len(evaluations),
        budget_met=all(v is not False for v in status.values()), budget_status=status, notes=notes,
        seconds=time.perf_counter() - started,
    )  # fmt: skip


def proxy_scores(fp32, islands, ladder, lowest, proxy: TextRunner) -> tuple[dict[str, dict], int]:
    """Per island: output SQNR in the all-lowest model, and the cosine gain of promoting it alone to each rung."""
    base_model = assemble(fp32, islands, lowest)
    reference = proxy.vectors(fp32)
    sqnr = island_output_sqnr(fp32, base_model, islands, proxy)
    base_cos = float(cosines(reference, proxy.vectors(base_model)).mean())
    scores = {i.name: {"output_sqnr_db": sqnr.get(i.name), "gain": {}} for i in islands}
    passes = 4  # FP32 and all-lowest: vectors, and island outputs
    jobs = [(i, rung) for i in islands for rung in _rungs(i, ladder)[1:]]
    for island, rung in track(jobs, "sensitivity", total=len(jobs)):
        same_as = next((r for r in LADDER if island.candidates.get(r) is island.candidates[rung]), rung)
        if same_as != rung:  # an alias of a lower rung (a Gather's w8 is its int8): nothing to measure
            scores[island.name]["gain"][rung] = scores[island.name]["gain"].get(same_as, 0.0)
            continue
        promoted = {**lowest, island.name: rung}
        gain = float(cosines(reference, proxy.vectors(assemble(fp32, islands, promoted))).mean()) - base_cos
        scores[island.name]["gain"][rung] = round(gain, 6)
        passes += 1
    return scores, passes


def island_output_sqnr(fp32, quantized, islands, proxy) -> dict[str, float]:
    """SQNR (dB) of each island's output tensor, quantized model vs FP32, over the proxy texts."""
    outputs = {i.name: _output_of(fp32, i.node_name) for i in islands}
    wanted = [o for o in outputs.values() if o]
    ref, quant = proxy.tensors(fp32, wanted), proxy.tensors(quantized, wanted)
    result = {}
    for name, tensor in outputs.items():
        if tensor in ref:
            r, q = np.concatenate([a.ravel() for a in ref[tensor]]), np.concatenate([a.ravel() for a in quant[tensor]])
            noise = float(((r - q) ** 2).sum())
            result[name] = round(10 * math.log10(float((r**2).sum()) / noise), 2) if noise > 0 else None
    return result


def ordered_steps(islands, ladder, lowest, scores) -> list[Step]:
    """Single promotions ordered by cost, then by benefit: the cheaper rung's steps first (int8s costs one
    elementwise op, w8 FP32 compute, fp32 bytes), each tier by gain (per extra byte where it adds bytes).
    A rung's gain counts over the best rung below it; steps that gain nothing are left out."""
    steps = []
    for island in islands:
        rungs = _rungs(island, ladder)
        previous_gain, previous_size = 0.0, island.candidates[lowest[island.name]].size_bytes
        for rung in rungs[1:]:
            gain = scores[island.name]["gain"][rung]
            size = island.candidates[rung].size_bytes
            steps.append(Step(island.name, rung, gain - previous_gain, size - previous_size))
            previous_gain, previous_size = max(gain, previous_gain), size
    tier = {rung: i for i, rung in enumerate(LADDER)}
    useful = [s for s in steps if s.gain > 0]
    return sorted(useful, key=lambda s: (tier[s.to], -s.gain / s.size_cost if s.size_cost > 0 else -s.gain))


def cumulative(lowest, steps, fp32_size, islands, budget: Budget) -> list[dict]:
    """Configuration k = the lowest assignment plus the first k steps (a rung never moves down)."""
    order = {rung: i for i, rung in enumerate(LADDER)}
    assignment = dict(lowest)
    configs = [{"assignment": dict(assignment), "step": None, "size_bytes": model_size(fp32_size, islands, assignment)}]
    for step in steps:
        if order[step.to] <= order[assignment[step.island]]:
            continue
        assignment[step.island] = step.to
        size = model_size(fp32_size, islands, assignment)
        if budget.max_size_ratio is not None and size > budget.max_size_ratio * fp32_size:
            assignment = dict(configs[-1]["assignment"])
            continue
        configs.append({"assignment": dict(assignment), "step": f"{step.island} → {step.to}",
                        "expected_gain": round(step.gain, 6), "size_bytes": size})  # fmt: skip
    for config in configs:
        config["size_ratio"] = round(config["size_bytes"] / fp32_size, 4)
    return configs


def bisect(count: int, passes: Callable[[int], bool]) -> tuple[int, list[str]]:
    """Smallest index whose configuration passes: ⌈log₂K⌉ + 2 evaluations when the metric is monotone."""
    if passes(0):
        return 0, ["the lowest precision everywhere already meets the budget"]
    last = count - 1
    if last == 0 or not passes(last):
        return last, ["no configuration meets the fidelity budget; the most faithful one within the ceilings is kept"]
    low, high = 0, last  # low fails, high passes
    while high - low > 1:
        middle = (low + high) // 2
        if passes(middle):
            high = middle
        else:
            low = middle
    return high, []


def _latency_check(budget: Budget, evaluations: list[dict], chosen: int) -> str | None:
    if budget.max_latency_ratio is None:
        return None
    entry = next((e for e in evaluations if e["configuration"] == chosen), None)
    ratio = entry and entry["metrics"].get("latency_ratio")
    if ratio is not None and ratio > budget.max_latency_ratio:
        return f"latency ratio {ratio:.2f} is over the ceiling {budget.max_latency_ratio}"
    return None


def _rungs(island: Island, ladder: list[str]) -> list[str]:
    return [rung for rung in ladder if rung in island.candidates]


def _output_of(model: onnx.ModelProto, node_name: str) -> str | None:
    node = next((n for n in model.graph.node if n.name == node_name), None)
    return node.output[0] if node is not None else None
