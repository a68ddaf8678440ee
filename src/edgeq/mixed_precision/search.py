"""Choose each island's precision under a budget, with few full evaluations, at every deployment shape.

1. Proxy scores on a small calibration subset, at every shape: the SQNR of each island's output in the all-lowest
   model (one pass, as onnxruntime's qdq_loss_debug does per tensor), and, per island and higher candidate, the
   gain in cosine when only that island is promoted (G·(C-1) passes per shape). An island's gain is the mean over
   shapes, so a promotion that only one shape needs (padding, long texts) still counts.
2. Costs: bytes exactly (from the candidates); latency from measurement: the all-lowest model, FP32 and each rung
   applied everywhere are timed interleaved at every shape, and a rung's extra time is shared among its islands by
   their weight counts (a proxy for their FLOPs). An estimate, used to order and to drop; the chosen model's
   latency is then measured.
3. The ordered list of configurations: single promotions sorted by gain per share of the budget's headroom they
   use (bytes of the size ceiling, milliseconds of the latency ceiling), cumulated; configurations over a ceiling
   are dropped.
4. Bisection of that list with the real metrics on the validation texts at every shape (the budget holds on the
   worst shape): the first and last configuration, then ⌈log₂K⌉ more. Only the chosen one is then timed, against
   what the budget's latency ceilings name (the all-lowest model, FP32), interleaved: no other's time decides
   anything, and the validation stage measures its ratio to FP32 on the same texts and shapes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from edgeq.mixed_precision.assemble import assemble
from edgeq.mixed_precision.evaluate import FullEvaluator, Runner, with_worst_case
from edgeq.mixed_precision.islands import LADDER, Island, batch_invariant, island_outputs
from edgeq.progress import say, track


@dataclass
class Budget:
    min_cosine_mean: float | None = None
    min_cosine_min: float | None = None
    min_nn_agreement: float | None = None
    max_size_ratio: float | None = None
    max_latency_ratio: float | None = None
    max_slowdown: float | None = None
    floors: dict[str, float] = field(default_factory=dict)
    ceilings: dict[str, float] = field(default_factory=dict)
    ceilings_over_lowest: dict[str, float] = field(default_factory=dict)
    max_size_over_lowest: float | None = None

    def settle(self, lowest: dict) -> list[str]:
        """Turn the relative ceilings into absolute ones from the all-lowest model's metrics; say what they became."""
        said = []
        for key, factor in self.ceilings_over_lowest.items():
            measured = lowest.get(key)
            if measured is None:
                continue
            self.ceilings[key] = min(self.ceilings.get(key, float("inf")), factor * measured)
            said.append(f"ceiling {key} = {factor} x the all-lowest model's {measured:.6g} = {self.ceilings[key]:.6g}")
        return said

    def timed_against(self) -> list[str]:
        """What the chosen model is timed beside, for the latency ceilings set: the all-lowest model ("baseline")
        for max_slowdown, FP32 for max_latency_ratio. None set: it is not timed here (the validation stage measures
        its ratio to FP32 on the same texts and shapes)."""
        return [
            name for name, ceiling in (("baseline", self.max_slowdown), ("fp32", self.max_latency_ratio)) if ceiling
        ]

    def limits(self) -> list[tuple[str, float, int]]:
        """(metric, limit, +1 for a floor or -1 for a ceiling) of every fidelity limit set."""
        floors = [
            ("cosine_mean", self.min_cosine_mean),
            ("cosine_min", self.min_cosine_min),
            ("nn_agreement", self.min_nn_agreement),
            *self.floors.items(),
        ]
        return [(k, v, 1) for k, v in floors if v is not None] + [(k, v, -1) for k, v in self.ceilings.items()]

    def shortfall(self, metrics: dict) -> float:
        """How far the worst-case metrics miss the limits, relative to each limit, summed (0 when all are met)."""
        missed = 0.0
        for key, limit, sign in self.limits():
            value = metrics.get(key)
            gap = 1.0 if value is None else max(sign * (limit - value), 0.0) / max(abs(limit), 1e-6)
            missed += gap
        return missed

    def fidelity_failures(self, metrics: dict) -> list[str]:
        """The limits the worst-case metrics break, each naming the shape that broke it."""
        failures = []
        where = metrics.get("worst_shape", {})
        for key, limit, sign in self.limits():
            value = metrics.get(key)
            if value is None or sign * (value - limit) < 0:
                shape = f" at {where[key]}" if key in where else ""
                failures.append(f"{key} {_fmt(value)} {'<' if sign > 0 else '>'} {limit}{shape}")
        return failures


@dataclass
class Step:
    island: str
    to: str
    gain: float
    size_cost: int
    latency_cost: dict[str, float]  # estimated extra ms per shape


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
    latency_model: dict = field(default_factory=dict)
    binding: list[str] = field(default_factory=list)  # what the configuration before the chosen one missed


def model_size(fp32_size: int, islands: list[Island], assignment: dict[str, str]) -> int:
    """Bytes of the assembled model, from the FP32 size and the candidates' weight sizes."""
    return fp32_size + sum(
        i.candidates[assignment[i.name]].size_bytes - i.candidates["fp32"].size_bytes for i in islands
    )


def search(
    fp32: onnx.ModelProto,
    fp32_size: int,
    islands: list[Island],
    ladder: list[str],
    budget: Budget,
    proxy: Runner,
    full: FullEvaluator,
    measure_top: int | None = None,
) -> SearchResult:
    """`proxy` runs models on the proxy texts; `full(model)` gives validation metrics at every shape, and
    `full.latency(model)` the chosen one's time; only the `measure_top` islands with the lowest output SQNR get
    promotion passes (all when None)."""
    started = time.perf_counter()
    lowest = {i.name: _rungs(i, ladder)[0] for i in islands}
    scores, passes = proxy_scores(fp32, islands, ladder, lowest, proxy, measure_top)
    latency = latency_model(fp32, islands, ladder, lowest, proxy)
    steps = ordered_steps(islands, ladder, lowest, scores, latency, fp32_size, budget)
    configurations = cumulative(lowest, steps, fp32_size, islands, budget, latency)
    dropped = trim_to_exact_size(configurations, fp32, islands, budget, fp32_size)
    say(f"  mixed precision: {len(islands)} islands, {passes} proxy passes, {len(configurations)} configurations")
    reused = sum(len(s.get("same_at_batch", {})) for s in scores.values())
    batch_note = (
        [
            f"{reused} promotion(s) to a rung with no run-time activation scale were run at {proxy.labels[0]} "
            f"only: such a model computes each text of a padded batch as it does alone, so its proxy score at "
            f"{', '.join(proxy.batched_like_first)} is the same"
        ]
        if reused
        else []
    )
    evaluations: list[dict] = []
    settled: list[str] = []

    def evaluate(index: int) -> bool:
        model = assemble(fp32, islands, configurations[index]["assignment"])
        exact = _set_exact_size(configurations, index, model.ByteSize(), fp32_size)
        metrics = full(model)
        if index == 0:
            settled.extend(budget.settle(metrics))
        failures = budget.fidelity_failures(metrics) + _size_failures(budget, exact, configurations, fp32_size)
        evaluations.append({"configuration": index, "metrics": metrics, "passed": not failures, "failures": failures})
        say(
            f"  configuration {index} of {len(configurations) - 1} ({exact / 1e6:.1f} MB): "
            f"{'meets the budget' if not failures else 'misses ' + '; '.join(failures)}"
        )
        return not failures

    chosen, notes = bisect(len(configurations), evaluate)
    if chosen < 0:  # nothing passes: keep the evaluated configuration that misses the floors by the least
        chosen = min(
            evaluations,
            key=lambda e: (
                any(f.startswith("size ") for f in e["failures"]),
                budget.shortfall(e["metrics"]),
                e["configuration"],
            ),
        )["configuration"]
        notes = [
            f"no configuration meets the fidelity budget; kept configuration {chosen}, the evaluated one that "
            "misses its floors by the least"
        ]
    batch_note += _reuse_note(proxy, full)
    chosen_eval = next(e for e in evaluations if e["configuration"] == chosen)
    chosen_eval["metrics"] = timed(
        chosen_eval["metrics"],
        full.latency(assemble(fp32, islands, configurations[chosen]["assignment"]), budget.timed_against()),
    )
    latency_notes = _latency_checks(budget, chosen_eval["metrics"])
    below = [e for e in evaluations if e["configuration"] < chosen and not e["passed"]]
    status = {
        "fidelity": chosen_eval["passed"],
        "size": None
        if budget.max_size_ratio is None and budget.max_size_over_lowest is None
        else True,  # over: dropped
        "latency": None if budget.max_latency_ratio is None and budget.max_slowdown is None else not latency_notes,
    }
    return SearchResult(
        assignment=configurations[chosen]["assignment"],
        chosen_index=chosen,
        configurations=[{k: v for k, v in c.items() if k != "assignment"} for c in configurations],
        evaluations=evaluations,
        scores=scores,
        proxy_passes=passes,
        full_evaluations=len(evaluations),
        budget_met=all(v is not False for v in status.values()),
        budget_status=status,
        notes=settled + dropped + batch_note + notes + latency_notes,
        seconds=time.perf_counter() - started,
        latency_model=latency,
        binding=max(below, key=lambda e: e["configuration"])["failures"] if below else [],
    )


def trim_to_exact_size(configurations: list[dict], fp32, islands, budget: Budget, fp32_size: int) -> list[str]:
    """Drop, from the most promoted end, the configurations whose serialized bytes pass a size ceiling that their
    estimate did not (a bisection that finds its last configuration over the ceiling has nothing to stand on). Each
    check assembles one model; usually one or two are dropped."""
    if budget.max_size_ratio is None and budget.max_size_over_lowest is None:
        return []
    _set_exact_size(configurations, 0, assemble(fp32, islands, configurations[0]["assignment"]).ByteSize(), fp32_size)
    dropped = 0
    while len(configurations) > 1:
        size = assemble(fp32, islands, configurations[-1]["assignment"]).ByteSize()
        if not _size_failures(budget, size, configurations, fp32_size):
            _set_exact_size(configurations, len(configurations) - 1, size, fp32_size)
            break
        configurations.pop()
        dropped += 1
    return (
        [f"{dropped} configuration(s) dropped: their serialized bytes pass the size ceiling their estimate did not"]
        if dropped
        else []
    )


def _set_exact_size(configurations: list[dict], index: int, size: int, fp32_size: int) -> int:
    """An evaluated configuration's bytes are those of the model itself, serialized (what its file will hold)."""
    configurations[index].update(size_bytes=size, size_ratio=round(size / fp32_size, 4), size_exact=True)
    return size


def _size_failures(budget: Budget, size: int, configurations: list[dict], fp32_size: int) -> list[str]:
    """The size ceilings an evaluated configuration's exact bytes break (the estimate that admitted it was under)."""
    failures = []
    if budget.max_size_ratio is not None and size > budget.max_size_ratio * fp32_size:
        failures.append(f"size {size} bytes > {budget.max_size_ratio} x FP32's {fp32_size}")
    lowest = configurations[0]["size_bytes"]
    if budget.max_size_over_lowest is not None and size > budget.max_size_over_lowest * lowest:
        failures.append(f"size {size} bytes > {budget.max_size_over_lowest} x the all-lowest model's {lowest}")
    return failures


def proxy_scores(
    fp32, islands, ladder, lowest, proxy: Runner, measure_top: int | None = None
) -> tuple[dict[str, dict], int]:
    """Per island: output SQNR in the all-lowest model, and the proxy-score gain (cosine, or minus KL for a
    language model) of promoting it alone to each rung,
    per shape ("gain_by_shape") and as the mean over shapes ("gain"). With `measure_top`, only that many islands
    (the lowest output SQNR first) are promoted; the others are marked unmeasured and gain nothing."""
    base_model = assemble(fp32, islands, lowest)
    reference = proxy.outputs(fp32)
    sqnr = island_output_sqnr(fp32, base_model, islands, proxy)
    base = _scores(proxy.task, reference, proxy.outputs(base_model, reference))
    scores = {i.name: {"output_sqnr_db": sqnr.get(i.name), "gain": {}, "gain_by_shape": {}} for i in islands}
    passes = 4  # FP32 and all-lowest: vectors, and island outputs
    measured = most_damaged(fp32, islands, sqnr, measure_top)
    for island in islands:
        if island.name not in measured:
            scores[island.name].update(unmeasured=True, gain={r: 0.0 for r in _rungs(island, ladder)[1:]})
    jobs = [(i, rung) for i in islands if i.name in measured for rung in _rungs(i, ladder)[1:]]
    for island, rung in track(jobs, "sensitivity", total=len(jobs)):
        entry = scores[island.name]
        same_as = next((r for r in LADDER if island.candidates.get(r) is island.candidates[rung]), rung)
        if same_as != rung:  # an alias of a lower rung (a Gather's rows are the same INT8 at every rung)
            entry["gain"][rung] = entry["gain"].get(same_as, 0.0)
            entry["gain_by_shape"][rung] = entry["gain_by_shape"].get(same_as, {})
            continue
        assignment = {**lowest, island.name: rung}
        skipped = proxy.batched_like_first if batch_invariant(islands, assignment) else []
        measured_at = [label for label in proxy.labels if label not in skipped]
        promoted = _scores(
            proxy.task, reference, proxy.outputs(assemble(fp32, islands, assignment), reference, measured_at)
        )
        promoted.update(dict.fromkeys(skipped, promoted[proxy.labels[0]]))
        by_shape = {label: round(promoted[label] - base[label], 6) for label in base}
        if skipped:
            entry.setdefault("same_at_batch", {})[rung] = skipped
        entry["gain_by_shape"][rung] = by_shape
        entry["gain"][rung] = round(float(np.mean(list(by_shape.values()))), 6)
        passes += 1
    return scores, passes


def most_damaged(fp32, islands: list[Island], sqnr: dict[str, float | None], top: int | None) -> set[str]:
    """The names of the `top` islands with the lowest output SQNR (all of them when `top` is None), and the ends of
    the network (embedding tables, the layer writing the model's output), measured anyway: an output SQNR says how
    damaged a tensor is, not how much the next-token distribution cares (SmolLM2's LM head was left out by it)."""
    if top is None or top >= len(islands):
        return {i.name for i in islands}
    graph_outputs = {o.name for o in fp32.graph.output}
    writes = {n.name: n.output[0] for n in fp32.graph.node}
    ends = {i.name for i in islands if i.kind == "gather" or writes.get(i.node_name) in graph_outputs}
    ranked = sorted(islands, key=lambda i: sqnr.get(i.name) if sqnr.get(i.name) is not None else math.inf)
    return {i.name for i in ranked[:top]} | ends


def latency_model(fp32, islands, ladder, lowest, proxy: Runner) -> dict:
    """Measured p50 ms per shape of FP32, the all-lowest model and each higher rung everywhere it applies; and,
    per island and rung, the estimated extra ms per shape (the rung's extra time shared by weight count)."""
    models = {"fp32": fp32, "lowest": assemble(fp32, islands, lowest)}
    for rung in ladder:
        if rung != "fp32" and any(lowest[i.name] != rung and rung in i.candidates for i in islands):
            models[rung] = assemble(
                fp32, islands, {i.name: rung if rung in i.candidates else lowest[i.name] for i in islands}
            )
    measured = proxy.latencies(models)
    costs: dict[str, dict[str, dict[str, float]]] = {i.name: {} for i in islands}
    for rung in ladder:
        moved = [i for i in islands if rung in i.candidates and rung != lowest[i.name] and i.kind != "gather"]
        weights = sum(i.parameters for i in moved)
        source = "fp32" if rung == "fp32" else rung
        for island in moved:
            share = island.parameters / weights if source in models else 0.0
            costs[island.name][rung] = {
                label: round(max(m[source] - m["lowest"], 0.0) * share, 4) if source in m else 0.0
                for label, m in measured.items()
            }
    return {
        "p50_ms": {label: {k: round(v, 3) for k, v in m.items()} for label, m in measured.items()},
        "island_costs_ms": costs,
    }


def island_output_sqnr(fp32, quantized, islands, proxy: Runner) -> dict[str, float]:
    """SQNR (dB) of each island's output tensor, quantized model vs FP32, over the proxy texts (batch 1), summed
    sample by sample as both models run (no tensor is kept past its sample)."""
    outputs = island_outputs(fp32, islands)
    wanted = sorted(set(outputs.values()))
    signal, noise = dict.fromkeys(wanted, 0.0), dict.fromkeys(wanted, 0.0)
    for (ref, _), (quant, _) in zip(proxy.each_sample(fp32, wanted), proxy.each_sample(quantized, wanted)):
        for tensor in ref:
            r, q = ref[tensor].astype(np.float64).ravel(), quant[tensor].astype(np.float64).ravel()
            signal[tensor] += float(r @ r)
            noise[tensor] += float((r - q) @ (r - q))
    return {
        name: round(10 * math.log10(signal[t] / noise[t]), 2) if noise[t] > 0 and signal[t] > 0 else None
        for name, t in outputs.items()
        if t in signal
    }


def ordered_steps(islands, ladder, lowest, scores, latency, fp32_size, budget: Budget) -> list[Step]:
    """Single promotions ordered by gain per share of the budget's headroom they use: bytes of the size ceiling
    (or of FP32's size) and estimated ms of the latency ceiling (or of FP32's time), at the worst shape. A rung's
    gain counts over the best rung below it; steps that gain nothing are left out; ties go to the cheaper rung."""
    headroom = _headroom(islands, lowest, latency, fp32_size, budget)
    steps = []
    for island in islands:
        rungs = _rungs(island, ladder)
        previous_gain, previous_size = 0.0, island.candidates[lowest[island.name]].size_bytes
        previous_ms: dict[str, float] = {}
        for rung in rungs[1:]:
            gain = scores[island.name]["gain"][rung]
            size = island.candidates[rung].size_bytes
            ms = latency["island_costs_ms"][island.name].get(rung, {})
            extra_ms = {label: v - previous_ms.get(label, 0.0) for label, v in ms.items()}
            steps.append(Step(island.name, rung, gain - previous_gain, size - previous_size, extra_ms))
            previous_gain, previous_size, previous_ms = max(gain, previous_gain), size, ms
    tier = {rung: i for i, rung in enumerate(LADDER)}

    def share(step: Step) -> float:
        used = max(step.size_cost, 0) / headroom["bytes"]
        used += max([max(v, 0.0) / headroom["ms"][label] for label, v in step.latency_cost.items()], default=0.0)
        return used

    useful = [s for s in steps if s.gain > 0]
    return sorted(useful, key=lambda s: (-s.gain / max(share(s), 1e-9), tier[s.to]))


def _headroom(islands, lowest, latency, fp32_size, budget: Budget) -> dict:
    lowest_size = model_size(fp32_size, islands, lowest)
    ceilings = [fp32_size]
    if budget.max_size_ratio is not None:
        ceilings.append(budget.max_size_ratio * fp32_size)
    if budget.max_size_over_lowest is not None:
        ceilings.append(budget.max_size_over_lowest * lowest_size)
    ceiling = min(ceilings)
    ms = {}
    for label, m in latency["p50_ms"].items():
        top = m["lowest"] * budget.max_slowdown if budget.max_slowdown is not None else m["fp32"]
        ms[label] = max(top - m["lowest"], 1e-3 * m["lowest"])
    return {"bytes": max(ceiling - lowest_size, 1.0), "ms": ms}


def cumulative(lowest, steps, fp32_size, islands, budget: Budget, latency: dict) -> list[dict]:
    """Configuration k = the lowest assignment plus the first k steps (a rung never moves down); a step that
    would cross the size ceiling or the estimated latency ceiling at any shape is skipped."""
    order = {rung: i for i, rung in enumerate(LADDER)}
    base_ms = {label: m["lowest"] for label, m in latency["p50_ms"].items()}
    assignment, spent = dict(lowest), {label: 0.0 for label in base_ms}
    configs = [
        {
            "assignment": dict(assignment),
            "step": None,
            "size_bytes": model_size(fp32_size, islands, assignment),
            "estimated_slowdown": 1.0,
        }
    ]
    for step in steps:
        if order[step.to] <= order[assignment[step.island]]:
            continue
        trial = {**assignment, step.island: step.to}
        size = model_size(fp32_size, islands, trial)
        ms = {
            label: spent[label]
            + latency["island_costs_ms"][step.island].get(step.to, {}).get(label, 0.0)
            - latency["island_costs_ms"][step.island].get(assignment[step.island], {}).get(label, 0.0)
            for label in base_ms
        }
        slowdown = max((base_ms[label] + ms[label]) / base_ms[label] for label in base_ms)
        if budget.max_size_ratio is not None and size > budget.max_size_ratio * fp32_size:
            continue
        if budget.max_size_over_lowest is not None and size > budget.max_size_over_lowest * configs[0]["size_bytes"]:
            continue
        if budget.max_slowdown is not None and slowdown > budget.max_slowdown:
            continue
        assignment, spent = trial, ms
        configs.append(
            {
                "assignment": dict(assignment),
                "step": f"{step.island} → {step.to}",
                "expected_gain": round(step.gain, 6),
                "size_bytes": size,
                "estimated_slowdown": round(slowdown, 4),
            }
        )
    for config in configs:
        config["size_ratio"] = round(config["size_bytes"] / fp32_size, 4)
    return configs


def bisect(count: int, passes: Callable[[int], bool]) -> tuple[int, list[str]]:
    """Smallest index whose configuration passes: ⌈log₂K⌉ + 2 evaluations when the metric is monotone; -1 when
    neither the first nor the last one passes."""
    if passes(0):
        return 0, ["the lowest precision everywhere already meets the budget"]
    last = count - 1
    if last == 0 or not passes(last):
        return -1, []
    low, high = 0, last  # low fails, high passes
    while high - low > 1:
        middle = (low + high) // 2
        if passes(middle):
            high = middle
        else:
            low = middle
    return high, []


def _reuse_note(*runners: Runner) -> list[str]:
    reused = sum(r.reused_batched for r in runners)
    if not reused:
        return []
    return [
        f"{reused} pass(es) at {', '.join(runners[0].batched_like_first)} stopped after their first batch, which gave "
        f"the {runners[0].labels[0]} outputs bit for bit (FP32, or a model with no run-time activation scale, "
        "computes each text of a padded batch as it does alone): the rest are those outputs"
    ]


def timed(metrics: dict, latency: dict[str, dict[str, float]]) -> dict:
    """An evaluation's metrics with the latency ratios measured per shape added, and the worst case again."""
    return with_worst_case({label: {**m, **latency.get(label, {})} for label, m in metrics["shapes"].items()})


def _latency_checks(budget: Budget, metrics: dict) -> list[str]:
    notes = []
    ratio, slowdown, where = metrics.get("latency_ratio"), metrics.get("slowdown"), metrics.get("worst_shape", {})
    if budget.max_latency_ratio is not None and ratio is not None and ratio > budget.max_latency_ratio:
        notes.append(
            f"latency ratio to FP32 {ratio:.2f} at {where.get('latency_ratio')} is over the ceiling "
            f"{budget.max_latency_ratio}"
        )
    if budget.max_slowdown is not None and slowdown is not None and slowdown > budget.max_slowdown:
        notes.append(
            f"measured slowdown {slowdown:.3f} over the all-lowest model at {where.get('slowdown')} is over "
            f"the ceiling {budget.max_slowdown} (the estimate that admitted it was lower; latency on a "
            "shared machine is noisy)"
        )
    return notes


def _scores(task, reference: dict[str, list], candidate: dict[str, list]) -> dict[str, float]:
    """The task's proxy score (higher is better: mean cosine, or minus the mean KL of a language model) per shape
    the candidate was run at."""
    return {label: task.proxy_score(reference[label], candidate[label]) for label in candidate}


def _fmt(value) -> str:
    return "not finite" if value is None else f"{value:.4f}"


def _rungs(island: Island, ladder: list[str]) -> list[str]:
    return [rung for rung in ladder if rung in island.candidates]
