"""Compare, in one run on one machine, on held-out text: a language model's FP32 export, uniform INT4 by
onnxruntime's quantizer (the build's int4/: its default, embedding table included; and the RTN and k-quant
algorithm configs, which leave the embedding table in FP32), the onnxruntime-genai model builder's fixed mixed rule
(`k_quant_mixed`: llama.cpp's rule, 8-bit value and down projections in some layers and an 8-bit LM head), and
edgeq's final model (its measured per-projection choice).

    python bench/compare_lm.py [--build build/tiny-llama-int4] [--heldout bench/data/lm-heldout.txt]

Fidelity is against FP32 on every position of the held-out paragraphs (next-token top-1 agreement, KL in nats
per token, perplexity) plus greedy continuations through the KV cache. Decode speed: each model generates the same
32 tokens after a 64-token prompt, the models in turn (interleaved), on the device profile's threads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgeq.feeds import run_batch  # noqa: E402
from edgeq.targets.profiles import host_cpu_device, load_device  # noqa: E402
from edgeq.targets.runtime import make_session  # noqa: E402
from edgeq.tasks import TASKS  # noqa: E402
from edgeq.tasks.base import Sample  # noqa: E402


def genai_mixed_rule(names: list[str], layers: int) -> dict[str, dict]:
    """The onnxruntime-genai builder's `k_quant_mixed` choice (llama.cpp's): 8 bits for the value and down
    projections of the first and last eighth of the layers and every third layer between, and for the LM head."""
    chosen = [i for i in range(layers) if i < layers / 8 or i >= 7 * layers / 8 or (i - round(layers / 8)) % 3 == 2]
    wanted = {f"/model/layers.{i}/{part}/MatMul" for i in chosen for part in ("self_attn/v_proj", "mlp/down_proj")}
    wanted.add("/lm_head/MatMul")
    return {name: {"bits": 8} for name in names if name in wanted}


def onnxruntime_int4(fp32: Path, out: Path, algorithm: str, layers: int) -> Path:
    """onnxruntime's MatMulNBits quantizer (what the genai builder calls), blocks of 32, MatMul and Gather."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        KQuantWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
        RTNWeightOnlyQuantConfig,
    )

    model = onnx.load(str(fp32))
    names = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    config = {
        "rtn": lambda: RTNWeightOnlyQuantConfig(),
        "k_quant": lambda: KQuantWeightOnlyQuantConfig(),
        "k_quant_mixed": lambda: KQuantWeightOnlyQuantConfig(customized_weight_config=genai_mixed_rule(names, layers)),
    }[algorithm]()
    quantizer = MatMulNBitsQuantizer(
        model, block_size=32, is_symmetric=True, algo_config=config, op_types_to_quantize=("MatMul", "Gather")
    )
    quantizer.process()
    result = quantizer.model.model
    for opset in result.opset_import:  # the quantizer stamps ai.onnx 21 without converting ops
        if opset.domain in ("", "ai.onnx"):
            opset.version = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    result.ir_version = max(result.ir_version, 10)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(result, str(out / "model.onnx"))
    return out / "model.onnx"


def measure_fidelity(models: dict[str, Path], texts: list[str], folder: Path, device) -> dict[str, dict]:
    task = TASKS["text-generation"]
    inputs = task.inputs(folder, 128, False)
    samples = [Sample(text=t) for t in texts]
    batches = task.batches(samples, inputs, 1)
    sessions = {name: make_session(path, device, spinning=False) for name, path in models.items()}
    items = {name: [] for name in models}
    follow = {name: [] for name in models}
    reference = next(iter(models))
    for index, batch in enumerate(batches):
        produced = {name: task.compared(run_batch(session, batch), batch) for name, session in sessions.items()}
        for name, session in sessions.items():
            items[name] += task.pair(produced[reference], produced[name], batch)  # reduced batch by batch
            if index < task.follow_up_samples:
                follow[name] += task.follow_up(session, batch, inputs)
    return {
        name: task.metrics(None, items[name], samples, inputs, (follow[reference], follow[name])) for name in models
    }


def held_out_texts(path: Path, model_dir: Path) -> list[str]:
    """A .txt (a text a line) or a .jsonl of conversations (`messages`, rendered with the model's chat template)."""
    if path.suffix == ".jsonl":
        from edgeq.recipe.schema import DataSource

        return [s.text for s in TASKS["text-generation"].read(DataSource(path=path), None, "heldout", model_dir)]
    return [t.strip() for t in path.read_text().splitlines() if t.strip()]


def measure_speed(models: dict[str, Path], folder: Path, device, rounds: int) -> dict[str, dict]:
    from edgeq.profile import ProfileSettings, profile_models
    from edgeq.targets import load_target

    settings = ProfileSettings(runs=rounds, min_seconds=0, warmup=1, sequence_length=64, new_tokens=32)
    result = profile_models(list(models.values()), load_target(device), settings, TASKS["text-generation"])
    return {
        name: {k: p[k] for k in ("decode_tokens_per_s", "ttft_ms", "peak_rss_mb")}
        for name, p in zip(models, result["profiles"])
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, default=ROOT / "build" / "tiny-llama-int4")
    parser.add_argument("--heldout", type=Path, default=ROOT / "bench" / "data" / "lm-heldout.txt")
    parser.add_argument("--device", default=None, help="Device profile for session settings. Default: this host's.")
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved generations per model for the speed.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    build = args.build.resolve()
    fp32 = build / "fp32" / "model.onnx"
    if not fp32.is_file():
        sys.exit(f"Error: no {fp32}; run `edgeq build recipes/tiny-llama-int4.yaml` first")
    texts = held_out_texts(args.heldout, build / "fp32")
    seen = {
        text
        for name in ("lm-calibration.txt", "lm-validation.txt", "lm-chat-calibration.jsonl", "lm-chat-validation.jsonl")
        for text in held_out_texts(ROOT / "recipes" / "data" / name, build / "fp32")
    }
    if overlap := [t for t in texts if t in seen]:
        sys.exit(f"Error: {len(overlap)} held-out texts also appear in the recipe's calibration/validation data")
    device = load_device(args.device or host_cpu_device())
    layers = json.loads((build / "fp32" / "config.json").read_text())["num_hidden_layers"]
    with tempfile.TemporaryDirectory(prefix="edgeq-bench-lm-") as tmp, contextlib.chdir(tmp):
        work = Path(tmp)
        models = {"FP32 (export)": fp32, "uniform INT4 (build's int4/)": build / "int4" / "model.onnx"}
        for name, algorithm in (
            ("INT4 RTN, LM table FP32", "rtn"),
            ("INT4 k-quant, LM table FP32", "k_quant"),
            ("genai k_quant_mixed rule", "k_quant_mixed"),
        ):
            started = time.perf_counter()
            models[name] = onnxruntime_int4(fp32, work / algorithm, algorithm, layers)
            print(f"  {name}: built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        models["edgeq final"] = build / "final" / "model.onnx"
        print(f"measuring {len(models)} models on {len(texts)} held-out paragraphs", file=sys.stderr)
        fidelity = measure_fidelity(models, texts, build / "fp32", device)
        speed = measure_speed(
            {k: models[k] for k in ("FP32 (export)", "uniform INT4 (build's int4/)", "edgeq final")},
            build / "fp32",
            device,
            args.rounds,
        )
        sizes = {name: path.stat().st_size for name, path in models.items()}
    base = sizes["uniform INT4 (build's int4/)"]
    print(
        f"\n{build.name} on {len(texts)} held-out paragraphs ({sum(f['tokens'] for f in fidelity.values()) // len(fidelity)} "
        f"tokens), {device.id} ({device.threads} threads)\n"
    )
    header = f"{'model':<30}{'MB':>7}{'vs INT4':>9}{'top-1':>8}{'KL':>9}{'ppl':>8}{'greedy':>8}{'tok/s':>8}"
    print(header)
    print("-" * len(header))
    rows = []
    for name in models:
        f, s = fidelity[name], speed.get(name, {})
        rows.append({"model": name, "bytes": sizes[name], "size_vs_int4": sizes[name] / base, **f, **s})
        tok = f"{s['decode_tokens_per_s']:>8.0f}" if s else f"{'':>8}"
        print(
            f"{name:<30}{sizes[name] / 1e6:>7.2f}{sizes[name] / base:>9.3f}{f['next_token_top1_agreement']:>8.4f}"
            f"{f['kl_divergence_mean']:>9.5f}{f['perplexity']:>8.2f}{f.get('greedy_match_tokens', 0):>8.2f}{tok}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"texts": len(texts), "device": device.id, "rows": rows}, indent=2, default=str)
        )


if __name__ == "__main__":
    main()
