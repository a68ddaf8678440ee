"""quantization.four_bit_budget: which MatMuls bear 4-bit block weights, chosen by measured sensitivity under a byte
budget. Each candidate's sensitivity is the calibration proxy's loss against FP32 (a language model's KL per token)
when that MatMul's weight alone is replaced by its 4-bit codes (the very codes the build would write) in the FP32
model: one onnxruntime session with the candidates' weights as inputs serves every trial. MatMuls then go to 4 bits
in order of least loss per byte saved until the quantized MatMuls' weights fit the budget, and those the last, large
step made unneeded go back to 8 bits (greedy knapsack: the losses of separate MatMuls add up roughly, about 2.6x
more together on SmolLM2, README; the final model's fidelity is measured by validation anyway)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeq.errors import RecipeError
from edgeq.progress import track
from edgeq.quantize.numerics import dequantize_blocks

Outputs = list[dict[str, np.ndarray]]  # a model's outputs by name, one dict a feed


@dataclass
class Budget:
    """`fraction`: the quantized MatMuls' weight bytes allowed, of their FP16 bytes; `loss(reference, candidate)`:
    how far a candidate's outputs on `feeds` are from the reference's (0: the same), `loss_name` what it is."""

    fraction: float
    feeds: list[dict]
    loss: Callable[[Outputs, Outputs], float]
    loss_name: str = "loss"

    def check_reachable(self, sizes: dict) -> None:
        """A RecipeError when even every candidate at 4 bits does not fit, before any of the work."""
        fp16 = sum(s.fp16 for s in sizes.values())
        least = sum(s.four for s in sizes.values()) / fp16
        if least > self.fraction:
            raise RecipeError(
                f"quantization.four_bit_budget: {self.fraction} is below what these weights can take: "
                f"{least:.3f} of their FP16 bytes with every quantized MatMul at 4 bits",
                f"Set four_bit_budget: {np.ceil(least * 1000) / 1000:.3f} or more",
            )


def choose_four_bit(fp32: onnx.ModelProto, jobs: list, codes: dict, sizes: dict, budget: Budget) -> tuple[set, dict]:
    """The MatMuls (node names) to put at 4 bits, and what the report says of the search."""
    losses = sensitivities(fp32, jobs, codes, budget)
    saved = {j.node: sizes[j.node].eight - sizes[j.node].four for j in jobs}
    order = sorted(jobs, key=lambda j: losses[j.node] / max(saved[j.node], 1.0))
    fp16 = sum(s.fp16 for s in sizes.values())
    stored = sum(s.eight for s in sizes.values())
    start, chosen, allowed = stored / fp16, [], budget.fraction * fp16
    for job in order:
        if stored <= allowed:
            break
        chosen.append(job.node)
        stored -= saved[job.node]
    for node in reversed(chosen[:-1]):  # a large last step (a LM head) can leave earlier ones unneeded
        if stored + saved[node] <= allowed:
            chosen.remove(node)
            stored += saved[node]
    rank = {j.node: i for i, j in enumerate(order)}
    reason = (
        f"chosen by measured sensitivity (quantization.four_bit_budget {budget.fraction}): the {len(chosen)} "
        f"MatMuls of least {budget.loss_name} per byte saved, alone at 4 bits, of {len(jobs)} candidates, that bring "
        f"the MatMul weights from {start:.3f} to {stored / fp16:.3f} of their FP16 bytes"
    )
    return set(chosen), {
        "reason": reason,
        "budget": budget.fraction,
        "bytes_vs_fp16": round(stored / fp16, 4),
        "eight_bit_bytes_vs_fp16": round(start, 4),
        "loss": budget.loss_name,
        "samples": len(budget.feeds),
        "candidates": [
            {
                "matmul": j.node,
                "loss": float(f"{losses[j.node]:.4g}"),
                "bytes_saved": int(saved[j.node]),
                "rank": rank[j.node],
                "four_bit": j.node in chosen,
            }
            for j in jobs
        ],
    }


def sensitivities(fp32: onnx.ModelProto, jobs: list, codes: dict, budget: Budget) -> dict[str, float]:
    """Each MatMul's loss with its weight alone at its 4-bit codes, the rest of the model FP32."""
    import onnxruntime as ort

    names = {j.weight for j in jobs}
    weights = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer if t.name in names}
    trial = _weights_as_inputs(fp32, weights)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(trial.SerializeToString(), options, providers=["CPUExecutionProvider"])
    del trial
    declared = [i.name for i in session.get_inputs() if i.name not in weights]

    def run(override: dict) -> Outputs:
        found = []
        for feed in budget.feeds:
            values = session.run(None, {**{k: feed[k] for k in declared}, **weights, **override})
            found.append({o.name: v for o, v in zip(session.get_outputs(), values)})
        return found

    reference = run({})
    losses = {}
    for job in track(jobs, "4-bit sensitivity of each MatMul", total=len(jobs)):
        four = dequantize_blocks(*codes[job.node]).astype(np.float32)
        losses[job.node] = float(budget.loss(reference, run({job.weight: four})))
    return losses


def _weights_as_inputs(fp32: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of the FP32 model whose named initializers are graph inputs instead (fed on every run)."""
    trial = onnx.ModelProto()
    trial.CopyFrom(fp32)
    kept = [t for t in trial.graph.initializer if t.name not in weights]
    del trial.graph.initializer[:]
    trial.graph.initializer.extend(kept)
    trial.graph.input.extend(
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
        for name, value in weights.items()
    )
    return trial
