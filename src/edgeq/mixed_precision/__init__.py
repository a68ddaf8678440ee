"""Mixed-precision stage: keep only the islands that need it in higher precision, chosen by measured
sensitivity under a budget (or pinned by an overrides file), with the reason for each choice in words."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgeq.devices import DeviceProfile
from edgeq.mixed_precision.assemble import assemble
from edgeq.mixed_precision.evaluate import FullEvaluator, TextRunner
from edgeq.mixed_precision.islands import LADDER, Island, build_candidates, find_islands, matmul_inputs
from edgeq.mixed_precision.overrides import load_overrides, resolve, write_overrides
from edgeq.mixed_precision.search import Budget, SearchResult, model_size, search
from edgeq.text import TextEncoder

OVERRIDES_FILE = "overrides.yaml"
MEANING = {"xint8": "static INT8 with power-of-two scales, on the DPU",
           "int8": "dynamic INT8 (INT8 weights, activations quantized at run time)",
           "int8s": "dynamic INT8 with SmoothQuant (activation outliers moved into the weights)",
           "w8": "INT8 weights with FP32 compute (no activation quantization)", "fp32": "FP32"}  # fmt: skip
ON_CPU = {"xint8": "FP32 on the CPU (the DPU does not take it)"}


@dataclass
class MixedPrecisionJob:
    fp32_path: Path
    out_folder: Path
    config: object  # recipe MixedPrecisionConfig
    op_types: list[str] | None
    per_channel: bool
    device: DeviceProfile
    task: str
    proxy_texts: list[str]
    validation_texts: list[str]
    encoder: TextEncoder


def choose_precisions(job: MixedPrecisionJob) -> dict:
    """Write out_folder/model.onnx and overrides.yaml; return the report's mixed_precision section."""
    cfg = job.config
    fp32 = onnx.load(str(job.fp32_path))
    fp32_size = job.fp32_path.stat().st_size
    islands = find_islands(fp32, job.op_types)
    ladder = [rung for rung in LADDER if rung in cfg.candidates]
    proxy = TextRunner(job.encoder, job.proxy_texts, job.task, job.device)
    inputs = proxy.tensors(fp32, matmul_inputs(fp32, islands)) if {"int8s", "xint8"} & set(ladder) else {}
    absmax = activation_absmax(inputs) if "int8s" in ladder else None
    samples = {k: np.concatenate([a.ravel() for a in v]) for k, v in inputs.items()} if "xint8" in ladder else None
    build_candidates(fp32, islands, job.per_channel, absmax, cfg.smooth_alpha, samples)
    if cfg.overrides is not None:
        assignment = resolve(load_overrides(Path(cfg.overrides)), islands, ladder, Path(cfg.overrides))
        result = None
    else:
        budget = Budget(**cfg.budget.model_dump())
        full = FullEvaluator(job.encoder, job.validation_texts, job.task, job.device, fp32)
        result = search(fp32, fp32_size, islands, ladder, budget, proxy, full)
        assignment = result.assignment
    onnx.save(assemble(fp32, islands, assignment), str(job.out_folder / "model.onnx"))
    header = (f"edgeq mixed-precision overrides for {job.fp32_path.name}: pin this file with\n"
              f"  mixed_precision: {{overrides: <path to this file>}}\nto rebuild the same model with no search.")  # fmt: skip
    write_overrides(job.out_folder / OVERRIDES_FILE, islands, assignment, header)
    return section(islands, assignment, ladder, result, cfg, fp32_size)


def activation_absmax(tensors: dict[str, list[np.ndarray]]) -> dict:
    """Per-channel max |x| of every MatMul island's input over the proxy texts (SmoothQuant's statistics)."""
    return {name: np.max([np.abs(a).reshape(-1, a.shape[-1]).max(axis=0) for a in values], axis=0)
            for name, values in tensors.items()}  # fmt: skip


def section(islands: list[Island], assignment: dict[str, str], ladder: list[str], result: SearchResult | None,
            cfg, fp32_size: int) -> dict:  # fmt: skip
    counts = {rung: list(assignment.values()).count(rung) for rung in ladder}
    out = {
        "candidates": ladder,
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
        "islands": [island_entry(i, assignment, result, ladder) for i in islands],
    }
    if result:
        out["configurations"] = [{**c, "index": k} for k, c in enumerate(result.configurations)]
        out["evaluations"] = result.evaluations
        out["chosen_configuration"] = result.chosen_index
    return out


def island_entry(island: Island, assignment: dict[str, str], result: SearchResult | None, ladder: list[str]) -> dict:
    choice = assignment[island.name]
    entry = {"name": island.name, "node": island.node_name, "kind": island.kind, "parameters": island.parameters,
             "precision": choice}  # fmt: skip
    if result is None:
        entry["reason"] = "pinned by the overrides file"
        return entry
    score = result.scores[island.name]
    entry.update(output_sqnr_db=score["output_sqnr_db"], gain=score["gain"])
    entry["reason"] = reason(island, choice, score, result, ladder)
    return entry


def reason(island: Island, choice: str, score: dict, result: SearchResult, ladder: list[str]) -> str:
    """Why this island has this precision, in words, with the measured figures."""
    ranking = sorted(result.scores, key=lambda name: -max(result.scores[name]["gain"].values(), default=0.0))
    rank = ranking.index(island.name) + 1
    best = max(score["gain"].values(), default=0.0)
    sqnr = score["output_sqnr_db"]
    measured = (f"its output SQNR in the all-{ladder[0]} model is {sqnr:.1f} dB; " if sqnr is not None else "")
    if choice == ladder[0]:
        if result.chosen_index == 0:
            return f"kept {choice}: the all-{choice} model already meets the budget ({measured}rank {rank} of {len(ranking)})"
        return (f"kept {choice}: {measured}promoting it alone would raise the proxy cosine by only {best:+.5f} "
                f"(rank {rank} of {len(ranking)}), not needed to meet the budget")  # fmt: skip
    gain = score["gain"].get(choice, 0.0)
    meaning = ON_CPU[ladder[0]] if ladder[0] in ON_CPU and choice == "fp32" else MEANING[choice]
    return (f"kept {meaning}: {measured}promoting it alone raises the proxy cosine by {gain:+.5f} "
            f"(rank {rank} of {len(ranking)}); the search needed it to meet the budget")  # fmt: skip
