"""Where 4-bit weights leave a language model on the HTP: the w8a16 QDQ model of a static-decoder recipe, with chosen
groups of MatMul weights at 4 bits in the HTP's block form (symmetric codes in [-8, 7], one scale per 32 input rows
and output column), codes by GPTQ (Hessians of each MatMul's input from the FP32 model on the recipe's calibration
texts; `gptq clip`: each block's scale chosen for least Hessian-weighted rounding error) or by round to
nearest. Each variant is scored on the CPU EP against FP32 by `edgeq validate` (next-token
top-1, KL, perplexity, greedy continuations) on the recipe's validation texts and on held-out chat texts.

    python bench/htp_w4_frontier.py [--recipe recipes/smollm2-snapdragon.yaml] [--out /tmp/htp-w4]

Mode `emulated`, simulation only: the 4-bit weights are written dequantized, as float initializers, which is the
arithmetic a DequantizeLinear in blocked form does; the bytes are counted as the blocked form stores them (half a
byte a weight, a float32 scale per block). The measurement that picks the groups for a per-projection search.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

GROUPS = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "gate+up": ("gate_proj", "up_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
    "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
VARIANTS = [
    ("w8", None, None),
    *((f"w4 {g} gptq", g, "gptq") for g in GROUPS),
    ("w4 mlp nearest", "mlp", "nearest"),
    *((f"w4 {g} gptq clip", g, "gptq clip") for g in GROUPS),
]
METRICS = ("next_token_top1_agreement", "kl_divergence_mean", "perplexity", "greedy_match_tokens")


def stages(recipe: Path, out: Path):
    """The recipe's FP32 source and w8a16 QDQ stage (cached in `out` like any build), and its calibration feeds."""
    from edgeq.pipeline import (
        calibration_feeds,
        export_stage,
        legalize_stage,
        optimize_stage,
        plan_build,
        quantize_stage,
    )

    plan = plan_build(recipe, out / "build")
    source = export_stage(plan, False)
    if plan.recipe.optimize.enabled:
        source = optimize_stage(plan, source, False)
    if plan.legalizes:
        source = legalize_stage(plan, source, False)
    return plan, source, quantize_stage(plan, source, False), calibration_feeds(plan, source)


def four_bit_variant(quantized: Path, out: Path, chosen: list, rounding: str, hessians: dict) -> float:
    """Copy the QDQ folder to `out` with the chosen MatMuls' weights dequantized from 4-bit block codes; return
    the summed output error over the summed output energy of the chosen layers."""
    import onnx
    from onnx import numpy_helper

    from edgeq.quantize.four_bit import four_bit_codes
    from edgeq.quantize.numerics import dequantize_blocks, output_energy

    shutil.copytree(quantized, out)
    model = onnx.load(str(quantized / "model.onnx"))
    dequantizers = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    nodes = {n.name: n for n in model.graph.node}
    error = energy = 0.0
    for job, weight in chosen:
        hessian = hessians[job.activation]
        dequantized = dequantize_blocks(*four_bit_codes(weight, hessian, rounding))
        error += output_energy(dequantized - weight, hessian)
        energy += output_energy(weight, hessian)
        node = nodes[job.node]
        model.graph.node.remove(dequantizers[node.input[1]])
        node.input[1] = f"{job.weight}_4bit"
        model.graph.initializer.append(numpy_helper.from_array(dequantized.astype(np.float32), node.input[1]))
    onnx.save(model, str(out / "model.onnx"))
    return error / energy


def validate(model: Path, reference: Path, data: Path) -> dict:
    command = [sys.executable, "-m", "edgeq.cli", "validate", str(model), "--reference", str(reference)]
    command += ["--data", str(data), "--task", "text-generation", "--samples", "32", "--json"]
    found = subprocess.run(command, capture_output=True, text=True)
    if found.returncode not in (0, 3):  # 3: measured, below validate's default thresholds (a 4-bit model often is)
        raise SystemExit(f"Error: edgeq validate {model} failed: {found.stderr.strip()[-500:]}")
    metrics = json.loads(found.stdout)["metrics"]
    return {k: metrics.get(k) for k in METRICS}


def main() -> None:
    import onnx
    from onnx import numpy_helper

    from edgeq.quantize.gptq_rounding import input_hessians, matmul_roundings
    from edgeq.quantize.numerics import INT4_BLOCK

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "smollm2-snapdragon.yaml")
    parser.add_argument("--heldout", type=Path, default=ROOT / "bench" / "data" / "lm-chat-heldout.jsonl")
    parser.add_argument("--out", type=Path, default=Path("/tmp/htp-w4"))
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help=f"Only these variants (of: {[v[0] for v in VARIANTS]})."
    )
    parser.add_argument(
        "--budget",
        nargs="+",
        type=float,
        metavar="F",
        help="Instead of the fixed groups: build the recipe with quantization.four_bit_budget F (edgeq's search "
        "chooses the 4-bit MatMuls, codes by the recipe's rounding) and score that.",
    )
    parser.add_argument(
        "--scales",
        choices=("float", "uint8"),
        default="float",
        help="With --budget: quantization.four_bit_scales (uint8: the HTP's low-power block form).",
    )
    args = parser.parse_args()
    if args.budget:
        return searched(args)
    plan, source, quantized, feeds = stages(args.recipe, args.out)
    fp32 = onnx.load(str(source.folder / "model.onnx"))
    jobs = matmul_roundings(fp32, onnx.load(str(quantized.folder / "model.onnx")))
    weights = {t.name: t for t in fp32.graph.initializer}
    hessians, _ = input_hessians(fp32, sorted({j.activation for j in jobs}), feeds)
    data = {"validation": plan.recipe.validation.data.path, "held-out": args.heldout}
    shapes = [numpy_helper.to_array(weights[j.weight]).shape for j in jobs]
    fp16_bytes = sum(2 * k * n for k, n in shapes)
    results = {}
    for name, group, rounding in [v for v in VARIANTS if not args.only or v[0] in args.only]:
        chosen = [
            (j, numpy_helper.to_array(weights[j.weight]).astype(np.float64))
            for j in jobs
            if group and any(role in j.node for role in GROUPS[group])
        ]
        folder, row = quantized.folder, {}
        if chosen:
            folder = args.out / name.replace(" ", "-").replace("+", "")
            shutil.rmtree(folder, ignore_errors=True)
            row["relative_output_error"] = four_bit_variant(quantized.folder, folder, chosen, rounding, hessians)
        four = {j.weight for j, _ in chosen}
        stored = sum(
            k * n / 2 + k // INT4_BLOCK * n * 4 if j.weight in four else k * n + 4 * n
            for j, (k, n) in zip(jobs, shapes)
        )
        row["matmul_bytes_vs_fp16"] = round(stored / fp16_bytes, 4)
        for label, path in data.items():
            row[label] = validate(folder / "model.onnx", source.folder / "model.onnx", Path(path))
        results[name] = row
        print(name, json.dumps(row), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))  # --only: just the variants run


def searched(args) -> None:
    """quantization.four_bit_budget at each budget: the QDQ stage edgeq builds, scored like the fixed groups."""
    import yaml

    recipe = yaml.safe_load(args.recipe.read_text())
    for section in (recipe["quantization"]["calibration"], recipe["validation"]):  # the variants live in --out
        section["data"]["path"] = str((args.recipe.parent / section["data"]["path"]).resolve())
    results = {}
    for fraction in args.budget:
        quantization = {k: v for k, v in recipe["quantization"].items() if k != "four_bit_weights"}
        quantization = {**quantization, "four_bit_budget": fraction, "four_bit_scales": args.scales}
        variant = {**recipe, "quantization": quantization}
        path = args.out / f"budget-{fraction}-{args.scales}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(variant, sort_keys=False))
        plan, source, quantized, _ = stages(path, args.out)
        four = quantized.details["four_bit_weights"]
        roles = {}
        for name in four["matmuls"]:
            role = name.removesuffix("/MatMul").rsplit("/", 1)[-1]
            roles[role] = roles.get(role, 0) + 1
        row = {"matmul_bytes_vs_fp16": four["search"]["bytes_vs_fp16"], "four_bit_by_projection": roles}
        data = {"validation": plan.recipe.validation.data.path, "held-out": args.heldout}
        for label, data_path in data.items():
            row[label] = validate(quantized.folder / "model.onnx", source.folder / "model.onnx", Path(data_path))
        results[f"budget {fraction} {args.scales}"] = row
        print(f"budget {fraction} {args.scales}", json.dumps(row), flush=True)
    (args.out / f"budget-results-{args.scales}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
