"""Compare, in one run on one machine, on held-out sentences: FP32, Optimum's --avx512_vnni preset,
onnxruntime's stock dynamic and static recipes, and edgeq's models (uniform int8 and the final one).

    python bench/compare_minilm.py [--build build/minilm-int8-cpu] [--heldout bench/data/heldout.txt]

Every model comes from the same FP32 export (the build's fp32/). Latency is measured interleaved: for each
sentence, every model runs once, in turn, with the same session settings (the device's threads, intra-op
spinning off so that idle sessions do not steal cores), after a warm-up; the p50 of each model is divided by
FP32's. Cosine is between mean-pooled embeddings; nearest-neighbour agreement is the share of sentences whose
nearest other sentence (by cosine) is the same under the model as under FP32.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edgeq.devices import load_device  # noqa: E402
from edgeq.text import TextEncoder, feed_for, task_vectors  # noqa: E402
from edgeq.validate.metrics import cosines, nearest_neighbours  # noqa: E402
from edgeq.validate.sessions import make_session  # noqa: E402


def optimum_avx512_vnni(fp32_dir: Path, out: Path) -> Path:
    """What `optimum-cli onnxruntime quantize --avx512_vnni` does (dynamic, per-tensor by default)."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)
    ORTQuantizer.from_pretrained(fp32_dir, file_name="model.onnx").quantize(save_dir=out, quantization_config=config)
    return next(out.glob("*.onnx"))


def ort_stock_dynamic(fp32: Path, out: Path) -> Path:
    """onnxruntime's documented dynamic recipe: quantize_dynamic with its defaults."""
    from onnxruntime.quantization import quantize_dynamic

    target = out / "model.onnx"
    quantize_dynamic(str(fp32), str(target))
    return target


def ort_stock_static(fp32: Path, out: Path, encoder: TextEncoder, texts: list[str]) -> Path:
    """onnxruntime's documented static recipe: quant_pre_process, then quantize_static with its defaults."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([encoder.encode([t]) for t in texts])

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {k: v for k, v in item.items() if k in names}

    import onnx

    names = {i.name for i in onnx.load(str(fp32), load_external_data=False).graph.input}
    prepared = out / "prepared.onnx"
    try:
        quant_pre_process(str(fp32), str(prepared))
    except Exception:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    target = out / "model.onnx"
    quantize_static(str(prepared), str(target), Reader())
    prepared.unlink()
    return target


def measure(models: dict[str, Path], texts: list[str], encoder: TextEncoder, device, rounds: int) -> dict:
    sessions = {name: make_session(path, device, spinning=False) for name, path in models.items()}
    encoded = [encoder.encode([t]) for t in texts]
    feeds = {name: [feed_for(s.get_inputs(), e) for e in encoded] for name, s in sessions.items()}
    for name, session in sessions.items():
        for feed in feeds[name][:10]:
            session.run(None, feed)
    vectors = {name: [] for name in models}
    timings = {name: [] for name in models}
    for round_ in range(rounds):
        for index, e in enumerate(encoded):
            for name, session in sessions.items():
                start = time.perf_counter()
                out = session.run(None, feeds[name][index])[0]
                timings[name].append(time.perf_counter() - start)
                if round_ == 0:
                    vectors[name].append(task_vectors(out, e["attention_mask"], "feature-extraction"))
    return {name: (np.concatenate(vectors[name]), np.array(timings[name])) for name in models}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, default=ROOT / "build" / "minilm-int8-cpu")
    parser.add_argument("--heldout", type=Path, default=ROOT / "bench" / "data" / "heldout.txt")
    parser.add_argument("--calibration", type=Path, default=ROOT / "recipes" / "data" / "calibration.txt")
    parser.add_argument("--device", default="x86-avx512-vnni")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved passes over the held-out texts.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    for name in ("build", "heldout", "calibration", "json"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())

    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    fp32_dir = args.build / "fp32"
    if not (fp32_dir / "model.onnx").is_file():
        sys.exit(f"Error: no {fp32_dir / 'model.onnx'}; run `edgeq build recipes/minilm-int8-cpu.yaml` first")
    heldout = [t.strip() for t in args.heldout.read_text().splitlines() if t.strip()]
    seen = set(args.calibration.read_text().splitlines()) | set((ROOT / "recipes/data/validation.txt").read_text().splitlines())
    overlap = [t for t in heldout if t in seen]
    if overlap:
        sys.exit(f"Error: {len(overlap)} held-out texts also appear in calibration/validation data")
    device = load_device(args.device)
    encoder = TextEncoder(fp32_dir, 128)
    calibration = [t for t in args.calibration.read_text().splitlines() if t.strip()][:128]
    with tempfile.TemporaryDirectory(prefix="edgeq-bench-") as tmp, contextlib.chdir(tmp):  # ORT writes scratch to cwd
        tmp = Path(tmp)
        for name in ("optimum", "dynamic", "static"):
            (tmp / name).mkdir()
        print("building the comparison models from", fp32_dir, file=sys.stderr)
        models = {
            "FP32 (export)": fp32_dir / "model.onnx",
            "Optimum --avx512_vnni": optimum_avx512_vnni(fp32_dir, tmp / "optimum"),
            "onnxruntime stock dynamic": ort_stock_dynamic(fp32_dir / "model.onnx", tmp / "dynamic"),
            "onnxruntime stock static": ort_stock_static(fp32_dir / "model.onnx", tmp / "static", encoder, calibration),
        }
        for name, folder in (("edgeq uniform int8", "int8"), ("edgeq final", "final")):
            if (args.build / folder / "model.onnx").is_file():
                models[name] = args.build / folder / "model.onnx"
        print(f"measuring {len(models)} models on {len(heldout)} held-out texts, {args.rounds} interleaved rounds",
              file=sys.stderr)
        results = measure(models, heldout, encoder, device, args.rounds)
        sizes = {name: path.stat().st_size for name, path in models.items()}
    ref_vectors, ref_times = results["FP32 (export)"]
    ref_nn, ref_p50 = nearest_neighbours(ref_vectors), np.median(ref_times)
    rows = []
    for name, (vectors, times) in results.items():
        cos = cosines(ref_vectors, vectors)
        rows.append({
            "model": name, "size_mb": sizes[name] / 1e6, "size_ratio": sizes[name] / sizes["FP32 (export)"],
            "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "nn_agreement": float((nearest_neighbours(vectors) == ref_nn).mean()),
            "p50_ms": float(np.median(times) * 1000), "latency_ratio": float(np.median(times) / ref_p50),
        })  # fmt: skip
    header = f"{'model':<28}{'size MB':>9}{'size':>8}{'cos mean':>10}{'cos min':>9}{'NN agree':>10}{'p50 ms':>8}{'lat/FP32':>10}"
    print(f"\nMiniLM-L6 on {len(heldout)} held-out sentences, batch 1, {device.threads} threads, {args.rounds} "
          f"interleaved rounds ({device.id}, on-host)\n")  # fmt: skip
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:<28}{r['size_mb']:>9.2f}{r['size_ratio']:>8.1%}{r['cosine_mean']:>10.4f}{r['cosine_min']:>9.4f}"
              f"{r['nn_agreement']:>10.1%}{r['p50_ms']:>8.2f}{r['latency_ratio']:>10.2f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"texts": len(heldout), "device": device.id, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
