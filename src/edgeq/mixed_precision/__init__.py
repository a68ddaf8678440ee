"""Mixed-precision stage: keep only the islands that need it in higher precision, chosen by measured
sensitivity under a budget (or pinned by an overrides file), with the reason for each choice in words."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from edgeq.mixed_precision.assemble import assemble, compose, has_token_mask
from edgeq.mixed_precision.evaluate import FullEvaluator, Runner
from edgeq.mixed_precision.islands import (
    LADDER,
    STATS_RUNGS,
    Island,
    build_candidates,
    find_islands,
    island_outputs,
    matmul_inputs,
    release_fp32_weights,
)
from edgeq.mixed_precision.overrides import load_overrides, resolve, write_overrides
from edgeq.mixed_precision.search import Budget, SearchResult, model_size, search
from edgeq.mixed_precision.statistics import ActivationStats, StatisticsAccumulator
from edgeq.optimize.cpu_forms import split_fused_norms
from edgeq.progress import track
from edgeq.rungs import RUNGS
from edgeq.targets.target import Target

OVERRIDES_FILE = "overrides.yaml"
MEANING = {r.name: r.meaning for r in RUNGS}
ON_CPU = {
    ("xint8", "fp32"): "FP32 on the CPU (the DPU does not take it)",
    ("xint8", "w8"): "INT8 weights, FP32 compute on the CPU (the DPU does not take it)",
}


@dataclass
class MixedPrecisionJob:
    fp32_path: Path
    out_folder: Path
    config: object  # recipe MixedPrecisionConfig
    op_types: list[str] | None
    per_channel: bool
    target: Target
    task: object  # edgeq.tasks.Task
    proxy_samples: list
    validation_samples: list
    inputs: object  # the task's input maker
    shapes: list[tuple[int, int]]
    calibration_samples: list
    whole_batches_only: bool = False
    accuracy_level: int = 0  # MatMulNBits' compute for the 4-bit rungs (4: INT8 dot products)


def choose_precisions(job: MixedPrecisionJob) -> dict:
    """Write out_folder/model.onnx and overrides.yaml; return the report's mixed_precision section."""
    cfg = job.config
    fp32 = onnx.load(str(job.fp32_path))
    fp32_size = job.fp32_path.stat().st_size
    ladder = [rung for rung in LADDER if rung in cfg.candidates]
    op_types = job.op_types
    if "xint8" in ladder and op_types is not None and "Gather" not in op_types:
        op_types = [*op_types, "Gather"]  # a DPU model's embedding tables: INT8 rows on the CPU side, not FP32
    islands = find_islands(fp32, op_types)
    stats = activation_statistics(job, fp32, islands) if STATS_RUNGS & set(ladder) else None
    build_candidates(
        fp32,
        islands,
        ladder,
        job.per_channel,
        stats,
        cfg.smooth_alpha,
        has_token_mask(fp32),
        job.target.profile.quantization.int8_pairs_saturate,
        job.accuracy_level,
    )
    del stats  # sampled activation rows: only the candidates needed them
    if cfg.overrides is not None:
        assignment = resolve(load_overrides(Path(cfg.overrides)), islands, ladder, Path(cfg.overrides))
        result = None
    else:
        budget = Budget(**cfg.budget.model_dump())
        proxy = Runner(job.task, job.proxy_samples, job.inputs, job.target, job.shapes, job.whole_batches_only)
        proxy.keep(fp32, expose=sorted(set(island_outputs(fp32, islands).values())))
        lowest = {i.name: next(r for r in ladder if r in i.candidates) for i in islands}
        full = FullEvaluator(
            job.task,
            job.validation_samples,
            job.inputs,
            job.target,
            job.shapes,
            fp32,
            assemble(fp32, islands, lowest),
            job.whole_batches_only,
            proxy.shared,
        )
        if "fp32" not in ladder:  # FP32 runs from its session from here on; no assignment reads its island weights
            release_fp32_weights(fp32, islands)
        result = search(fp32, fp32_size, islands, ladder, budget, proxy, full, cfg.measure_top)
        assignment = result.assignment
    model_path = job.out_folder / "model.onnx"
    model = compose(fp32, islands, assignment)
    forms = split_fused_norms(model)
    onnx.save(model, str(model_path))
    header = (
        f"edgeq mixed-precision overrides for {job.fp32_path.name}: pin this file with\n"
        f"  mixed_precision: {{overrides: <path to this file>}}\nto rebuild the same model with no search."
    )
    write_overrides(job.out_folder / OVERRIDES_FILE, islands, assignment, header)
    report = section(
        islands,
        assignment,
        ladder,
        result,
        cfg,
        fp32_size,
        [job.task.shape_label(*s) for s in job.shapes],
        job.task.proxy_name,
    )
    report["size_ratio"] = round(model_path.stat().st_size / fp32_size, 4)  # the file's bytes, not an estimate
    if forms:
        report["cpu_forms"] = forms
    return report


def activation_statistics(
    job: MixedPrecisionJob, fp32: onnx.ModelProto, islands: list[Island]
) -> dict[str, ActivationStats]:
    """Per-channel statistics of every MatMul/Attention island's input over the calibration samples' real tokens."""
    runner = Runner(job.task, job.calibration_samples, job.inputs, job.target, job.shapes[:1], job.whole_batches_only)
    names = matmul_inputs(fp32, islands)
    accumulators = {name: StatisticsAccumulator() for name in names}
    for found, mask in track(runner.each_sample(fp32, names), "activation statistics", total=len(runner.single)):
        for name, values in found.items():
            accumulators[name].add(values, mask)
    return {name: accumulator.result() for name, accumulator in accumulators.items()}


def section(
    islands: list[Island],
    assignment: dict[str, str],
    ladder: list[str],
    result: SearchResult | None,
    cfg,
    fp32_size: int,
    shape_labels: list[str],
    proxy_name: str = "cosine",
) -> dict:
    counts = {rung: list(assignment.values()).count(rung) for rung in ladder}
    out = {
        "candidates": ladder,
        "shapes": shape_labels,
        "smooth_alpha": cfg.smooth_alpha if "int8s" in ladder else None,
        "budget": cfg.budget.model_dump(),
        "pinned_overrides": str(cfg.overrides) if cfg.overrides else None,
        "overrides_file": OVERRIDES_FILE,
        "precision_counts": counts,
        "size_ratio": round(model_size(fp32_size, islands, assignment) / fp32_size, 4),
        "proxy_passes": result.proxy_passes if result else 0,
        "full_evaluations": result.full_evaluations if result else 0,
        "search_seconds": round(result.seconds, 2) if result else 0.0,
        "budget_met": result.budget_met if result else None,
        "budget_status": result.budget_status if result else None,
        "notes": result.notes if result else [f"pinned by {cfg.overrides}: no search"],
        "proxy_score": proxy_name,
        "islands": [island_entry(i, assignment, result, ladder, proxy_name) for i in islands],
    }
    if result:
        out["binding"] = result.binding
        out["latency_model"] = {
            "p50_ms": result.latency_model["p50_ms"],
            "note": "measured interleaved on the proxy texts: FP32, the all-lowest model and "
            "each rung everywhere it applies; an island's cost is its rung's extra "
            "time shared by weight count (an estimate)",
        }
        out["configurations"] = [{**c, "index": k} for k, c in enumerate(result.configurations)]
        out["evaluations"] = result.evaluations
        out["chosen_configuration"] = result.chosen_index
    return out


def island_entry(
    island: Island,
    assignment: dict[str, str],
    result: SearchResult | None,
    ladder: list[str],
    proxy_name: str = "cosine",
) -> dict:
    choice = assignment[island.name]
    entry = {
        "name": island.name,
        "node": island.node_name,
        "kind": island.kind,
        "parameters": island.parameters,
        "precision": choice,
    }
    if island.tied:
        entry["tied_embedding"] = island.tied
    if island.candidates[choice].detail:
        entry["detail"] = island.candidates[choice].detail
    if result is None:
        entry["reason"] = "pinned by the overrides file"
        return entry
    score = result.scores[island.name]
    entry.update(output_sqnr_db=score["output_sqnr_db"], gain=score["gain"], gain_by_shape=score["gain_by_shape"])
    if result.latency_model["island_costs_ms"].get(island.name):
        entry["estimated_cost_ms"] = result.latency_model["island_costs_ms"][island.name]
    entry["reason"] = reason(island, choice, score, result, ladder, proxy_name)
    return entry


def reason(
    island: Island, choice: str, score: dict, result: SearchResult, ladder: list[str], proxy_name: str = "cosine"
) -> str:
    """Why this island has this precision, in words, with the measured figures and the shape that bound it."""
    ranking = sorted(result.scores, key=lambda name: -max(result.scores[name]["gain"].values(), default=0.0))
    rank = f"rank {ranking.index(island.name) + 1} of {len(ranking)}"
    lowest = next(r for r in ladder if r in island.candidates)
    sqnr = score["output_sqnr_db"]
    measured = f"its output SQNR in the all-{lowest} model is {sqnr:.1f} dB; " if sqnr is not None else ""
    if choice == lowest and score.get("unmeasured"):
        return (
            f"kept {choice}: {measured}not among the islands whose output the all-{lowest} model damages most "
            f"(measure_top), so no promotion of it was measured"
        )
    if choice == lowest:
        best = max(score["gain"].values(), default=0.0)
        fidelity_met = result.budget_status.get("fidelity", True)
        if result.chosen_index == 0 and fidelity_met:
            return f"kept {choice}: the all-{choice} model already meets the budget ({measured}{rank})"
        if result.chosen_index == 0:
            return (
                f"kept {choice}: {measured}the fidelity budget was not met, and no evaluated configuration came "
                f"closer to it than the all-{choice} model ({rank})"
            )
        if not fidelity_met:
            return (
                f"kept {choice}: {measured}promoting it alone would raise the proxy {proxy_name} by {best:+.5f} "
                f"({rank}); the fidelity budget was not met, and the bytes the size ceiling left went to islands "
                "that gained more per byte"
            )
        return (
            f"kept {choice}: {measured}promoting it alone would raise the proxy {proxy_name} by only {best:+.5f} "
            f"({rank}), not needed to meet the budget"
        )
    by_shape = score["gain_by_shape"].get(choice, {})
    same = score.get("same_at_batch", {}).get(choice, [])
    first = next(iter(by_shape), "")
    gains = (
        ", ".join(
            f"{v:+.5f} at {label}" + (f" (as at {first}: no run-time activation scale)" if label in same else "")
            for label, v in by_shape.items()
        )
        or f"{score['gain'].get(choice, 0):+.5f}"
    )
    meaning = ON_CPU.get((lowest, choice), MEANING[choice])
    bound = f" (the nearest cheaper configuration missed: {'; '.join(result.binding)})" if result.binding else ""
    return (
        f"kept {meaning}: {measured}promoting it alone raises the proxy {proxy_name} by {gains} ({rank}); the search "
        f"needed it to meet the budget{bound}"
    )
