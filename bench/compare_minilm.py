"""Compare, in one run on one machine, on held-out texts in three deployment shapes: FP32, Optimum's presets,
onnxruntime's stock dynamic and static recipes, NNCF's static INT8 (TRANSFORMER preset), and edgeq's models
(uniform int8 and the final one).

    python bench/compare_minilm.py [--build build/minilm-int8-cpu] [--heldout bench/data/heldout.txt]

Every model comes from the same FP32 export (the build's fp32/). The held-out texts (bench/data/heldout.txt: API
documentation lines, support questions, product reviews, search queries and long paragraphs) are in neither the
calibration nor the validation data and were never used to tune anything. Shapes:
  b1      every text alone (fidelity over all texts; latency split into `b1 short`, the texts under 64 tokens,
          and `b1 128`, the texts of at least 128 tokens, truncated at 128);
  b32     batches of 32 texts in file order, each padded to its longest text (how sentence-transformers embeds).
Latency is measured interleaved: for each input every model runs once, in turn, with the device profile's session
settings (threads; intra-op spinning off so that idle sessions do not steal cores), after a warm-up, over several
rounds; each model's p50 is divided by FP32's. Cosine is between mean-pooled embeddings; nearest-neighbour
agreement is the share of texts whose nearest other text (by cosine) is the same under the model as under FP32.
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

from edgeq.feeds import feed_for  # noqa: E402
from edgeq.targets.profiles import host_cpu_device, load_device  # noqa: E402
from edgeq.targets.runtime import make_session  # noqa: E402
from edgeq.tasks import TASKS  # noqa: E402
from edgeq.tasks.text_inputs import TextInputs  # noqa: E402
from edgeq.validate.metrics import cosines, nearest_neighbours  # noqa: E402

SHORT_TOKENS, LONG_TOKENS = 64, 128


def optimum_preset(fp32_dir: Path, out: Path, preset: str) -> Path:
    """What `optimum-cli onnxruntime quantize --avx2|--avx512_vnni` does (dynamic, per-tensor by default)."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    config = getattr(AutoQuantizationConfig, preset)(is_static=False, per_channel=False)
    ORTQuantizer.from_pretrained(fp32_dir, file_name="model.onnx").quantize(save_dir=out, quantization_config=config)
    return next(out.glob("*.onnx"))


def ort_stock_dynamic(fp32: Path, out: Path) -> Path:
    """onnxruntime's documented dynamic recipe: quantize_dynamic with its defaults."""
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(fp32), str(out / "model.onnx"))
    return out / "model.onnx"


def ort_stock_static(fp32: Path, out: Path, feeds: list[dict]) -> Path:
    """onnxruntime's documented static recipe: quant_pre_process, then quantize_static with its defaults."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    prepared = out / "prepared.onnx"
    try:
        quant_pre_process(str(fp32), str(prepared))
    except Exception:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out / "model.onnx"), Reader())
    prepared.unlink()
    return out / "model.onnx"


def nncf_static(fp32: Path, out: Path, feeds: list[dict]) -> Path:
    """NNCF's post-training static INT8 on the ONNX model with the TRANSFORMER preset, as its docs show."""
    import nncf
    import onnx

    model = onnx.load(str(fp32))
    quantized = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds))
    onnx.save(quantized, str(out / "model.onnx"))
    return out / "model.onnx"


ANCHORS = (
    "Optimum --avx2",
    "Optimum --avx512_vnni",
    "onnxruntime stock dynamic",
    "onnxruntime stock static",
    "NNCF static TRANSFORMER",
)


def build_anchors(
    fp32_dir: Path, work: Path, calibration_feeds: list[dict], only: list[str] | None = None
) -> dict[str, Path]:
    """FP32 and the anchors (all, or those whose name contains one of `only`), each made from the same export."""
    fp32 = fp32_dir / "model.onnx"
    made = {"FP32 (export)": fp32}
    makers = dict(
        zip(
            ANCHORS,
            (
                lambda o: optimum_preset(fp32_dir, o, "avx2"),
                lambda o: optimum_preset(fp32_dir, o, "avx512_vnni"),
                lambda o: ort_stock_dynamic(fp32, o),
                lambda o: ort_stock_static(fp32, o, calibration_feeds),
                lambda o: nncf_static(fp32, o, calibration_feeds),
            ),
        )
    )
    for name, make in makers.items():
        if only and not any(word.lower() in name.lower() for word in only):
            continue
        folder = work / name.split()[0].lower() / str(len(made))
        folder.mkdir(parents=True)
        started = time.perf_counter()
        made[name] = make(folder)
        print(f"  {name}: built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return made


def measure(models: dict[str, Path], feeds: list[dict], device, rounds: int) -> dict:
    """Every model on every feed, interleaved; vectors from the first round, timings from all."""
    sessions = {name: make_session(path, device, spinning=False) for name, path in models.items()}
    inputs = {name: [feed_for(s.get_inputs(), f) for f in feeds] for name, s in sessions.items()}
    for name, session in sessions.items():
        for feed in inputs[name][:5]:
            session.run(None, feed)
    vectors = {name: [] for name in models}
    timings = {name: np.zeros((rounds, len(feeds))) for name in models}
    for round_ in range(rounds):
        for index, feed in enumerate(feeds):
            for name, session in sessions.items():
                start = time.perf_counter()
                out = session.run(None, inputs[name][index])[0]
                timings[name][round_, index] = time.perf_counter() - start
                if round_ == 0:
                    vectors[name].append(pooled(out, feed["attention_mask"]))
    return {name: (np.concatenate(vectors[name]), timings[name]) for name in models}


def pooled(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean-pooled embeddings, as edgeq's feature-extraction task computes them."""
    from edgeq.tasks.base import Batch

    return np.stack(TASKS["feature-extraction"].compared({"last_hidden_state": states}, Batch({}, mask, [])))


def fidelity(reference: np.ndarray, vectors: np.ndarray) -> dict:
    cos = cosines(reference, vectors)
    return {
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "nn_agreement": float((nearest_neighbours(reference) == nearest_neighbours(vectors)).mean()),
    }


def summarise(models, single, batched, lengths, sizes) -> list[dict]:
    short, long_ = lengths < SHORT_TOKENS, lengths >= LONG_TOKENS
    ref_b1, ref_b1_times = single["FP32 (export)"]
    ref_b32, ref_b32_times = batched["FP32 (export)"]
    rows = []
    for name in models:
        b1_vectors, b1_times = single[name]
        b32_vectors, b32_times = batched[name]
        ratio = lambda times, ref, mask=None: float(
            np.median(times[:, mask] if mask is not None else times)  # noqa: E731
            / np.median(ref[:, mask] if mask is not None else ref)
        )
        rows.append(
            {
                "model": name,
                "size_mb": sizes[name] / 1e6,
                "size_ratio": sizes[name] / sizes["FP32 (export)"],
                "b1": fidelity(ref_b1, b1_vectors),
                "b32": fidelity(ref_b32, b32_vectors),
                "latency_ratio": {
                    "b1 short": ratio(b1_times, ref_b1_times, short),
                    "b1 128": ratio(b1_times, ref_b1_times, long_),
                    "b32": ratio(b32_times, ref_b32_times),
                },
                "p50_ms": {
                    "b1 short": float(np.median(b1_times[:, short]) * 1000),
                    "b1 128": float(np.median(b1_times[:, long_]) * 1000),
                    "b32": float(np.median(b32_times) * 1000),
                },
            }
        )
    return rows


def machine_isa() -> dict:
    """This host's CPU and the x86 ISA levels onnxruntime's INT8 kernels choose between: every speed figure carries it."""
    import platform

    from edgeq.targets.runner import cpu_info

    model, flags = cpu_info()
    return {
        "cpu": model,
        "machine": platform.machine(),
        "isa": [f for f in ("avx512_vnni", "avx_vnni", "avx2") if f in flags],
    }


def print_table(rows: list[dict], texts: int, device, rounds: int, mode: str, counts: dict) -> None:
    host = machine_isa()
    print(
        f"\nMiniLM-L6 on {texts} held-out texts ({counts['short']} under {SHORT_TOKENS} tokens, {counts['long']} of "
        f"{LONG_TOKENS}+), {device.threads} threads, {rounds} interleaved rounds ({device.id}, {mode}; host "
        f"{host['cpu']}, ISA {'/'.join(host['isa']) or 'no AVX2'})\n"
    )
    header = (
        f"{'model':<27}{'size':>7} | {'b1 cos mean':>11}{'min':>8}{'NN':>7} | {'b32 cos mean':>12}{'min':>8}"
        f"{'NN':>7} | {'time/FP32: b1 short':>19}{'b1 128':>8}{'b32':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        a, b, lat = r["b1"], r["b32"], r["latency_ratio"]
        print(
            f"{r['model']:<27}{r['size_ratio']:>7.1%} | {a['cosine_mean']:>11.4f}{a['cosine_min']:>8.4f}"
            f"{a['nn_agreement']:>7.3f} | {b['cosine_mean']:>12.4f}{b['cosine_min']:>8.4f}{b['nn_agreement']:>7.3f} | "
            f"{lat['b1 short']:>19.3f}{lat['b1 128']:>8.3f}{lat['b32']:>7.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, default=ROOT / "build" / "minilm-int8-cpu")
    parser.add_argument("--heldout", type=Path, default=ROOT / "bench" / "data" / "heldout.txt")
    parser.add_argument("--calibration", type=Path, default=ROOT / "recipes" / "data" / "calibration.txt")
    parser.add_argument("--device", default=None, help="Device profile for session settings. Default: this host's.")
    parser.add_argument(
        "--rounds", type=int, default=3, help="Interleaved passes at batch 1 (batch 32: twice as many)."
    )
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument(
        "--anchors",
        nargs="+",
        metavar="WORD",
        help=f"Only the anchors whose name contains one of these words (of: {'; '.join(ANCHORS)}); "
        "FP32 and edgeq's models always run. A shorter run to repeat a comparison.",
    )
    parser.add_argument(
        "--also",
        nargs="+",
        default=[],
        metavar="LABEL=BUILD",
        help="Other edgeq build folders of the same model (e.g. a recipe variant): each one's final model joins the "
        "run as `edgeq final (LABEL)`.",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    build = args.build.resolve()
    fp32_dir = build / "fp32"
    if not (fp32_dir / "model.onnx").is_file():
        sys.exit(f"Error: no {fp32_dir / 'model.onnx'}; run `edgeq build recipes/minilm-int8-cpu.yaml` first")
    heldout = [t.strip() for t in args.heldout.read_text().splitlines() if t.strip()]
    seen = set(args.calibration.read_text().splitlines()) | set(
        (ROOT / "recipes/data/validation.txt").read_text().splitlines()
    )
    if overlap := [t for t in heldout if t in seen]:
        sys.exit(f"Error: {len(overlap)} held-out texts also appear in calibration/validation data")
    device = load_device(args.device or host_cpu_device())
    from edgeq.targets.host import mode_for

    encoder = TextInputs(fp32_dir, LONG_TOKENS)
    calibration = [t for t in args.calibration.read_text().splitlines() if t.strip()][:128]
    calibration_feeds = [encoder.encode([t]) for t in calibration]
    single_feeds = [encoder.encode([t]) for t in heldout]
    batched_feeds = [encoder.encode(heldout[i : i + 32]) for i in range(0, len(heldout), 32)]
    lengths = np.array([f["attention_mask"].sum() for f in single_feeds])
    with tempfile.TemporaryDirectory(prefix="edgeq-bench-") as tmp, contextlib.chdir(tmp):  # ORT writes scratch to cwd
        print("building the comparison models from", fp32_dir, file=sys.stderr)
        models = build_anchors(fp32_dir, Path(tmp), calibration_feeds, args.anchors)
        for name, folder in (("edgeq uniform int8", "int8"), ("edgeq final", "final")):
            if (build / folder / "model.onnx").is_file():
                models[name] = build / folder / "model.onnx"
        for label, other in (item.partition("=")[::2] for item in args.also):
            final = Path(other).resolve() / "final" / "model.onnx"
            if not final.is_file():
                sys.exit(f"Error: --also {label}={other}: no {final}; give LABEL=BUILD_FOLDER of a finished build")
            models[f"edgeq final ({label})"] = final
        print(f"measuring {len(models)} models on {len(heldout)} held-out texts", file=sys.stderr)
        single = measure(models, single_feeds, device, args.rounds)
        batched = measure(models, batched_feeds, device, 2 * args.rounds)
        sizes = {name: path.stat().st_size for name, path in models.items()}
    rows = summarise(models, single, batched, lengths, sizes)
    counts = {"short": int((lengths < SHORT_TOKENS).sum()), "long": int((lengths >= LONG_TOKENS).sum())}
    print_table(rows, len(heldout), device, args.rounds, mode_for(device), counts)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "texts": len(heldout),
                    "device": device.id,
                    "mode": mode_for(device),
                    "host": machine_isa(),
                    "counts": counts,
                    "rows": rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
