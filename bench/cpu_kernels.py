"""Time onnxruntime's fused encoder kernels against the standard ops edgeq writes instead (edgeq.optimize.cpu_forms),
on this host's CPU EP, at an encoder's batch shapes.

    python bench/cpu_kernels.py [--hidden 384] [--intermediate 1536] [--json out.json]

Pairs, each one graph of one to three nodes with a dynamic batch and sequence length (as an exported encoder has),
fed the same random tensor, run interleaved:
  SkipLayerNormalization (with bias)  vs  Add(bias) + Sum + LayerNormalization
  SkipLayerNormalization (with bias)  vs  Sum + LayerNormalization           (the bias inside the GEMM before it)
  SkipLayerNormalization (with bias)  vs  Add(bias) + Add + LayerNormalization (onnxruntime fuses these back into
                                          SkipLayerNormalization at load: hence Sum for the residual)
  BiasGelu                            vs  Gelu                               (the bias inside the GEMM before it)
  BiasGelu                            vs  Add(bias) + Gelu                   (fused back into BiasGelu at load)
"The bias inside the GEMM" is fed x + bias, as the GEMM's output would be. Every pair's outputs are compared
(largest absolute difference printed), and the ISA goes with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))

from compare_minilm import machine_isa  # noqa: E402

MS = "com.microsoft"
SHAPES = ((1, 16), (1, 128), (32, 128))


def constants(width: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "gamma": (rng.random(width) + 0.5).astype(np.float32),
        "beta": rng.standard_normal(width).astype(np.float32),
        "bias": rng.standard_normal(width).astype(np.float32),
    }


def graph(nodes, width: int, inputs: tuple[str, ...]) -> bytes:
    dims = ["batch", "sequence", width]
    tensors = constants(width)
    used = {name for node in nodes for name in node.input}
    initializers = [numpy_helper.from_array(v, k) for k, v in tensors.items() if k in used]
    body = helper.make_graph(
        nodes,
        "kernel",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims) for name in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        initializers,
    )
    model = helper.make_model(body, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def pairs(hidden: int, intermediate: int) -> dict[str, tuple[int, tuple[str, ...], list, list]]:
    """name → (width, inputs, fused nodes, standard nodes); the standard side computes the same function (of x + bias
    where the name says the bias is in the GEMM)."""
    node = helper.make_node
    skip_fused = [
        node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], ["y"], domain=MS, epsilon=1e-12)
    ]
    layer_norm = node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)
    return {
        "SkipLayerNorm+bias vs Add(bias)+Sum+LayerNorm": (
            hidden,
            ("x", "skip"),
            skip_fused,
            [node("Add", ["x", "bias"], ["xb"]), node("Sum", ["xb", "skip"], ["s"]), layer_norm],
        ),
        "SkipLayerNorm+bias vs Sum+LayerNorm (bias in the GEMM)": (
            hidden,
            ("x", "skip"),
            skip_fused,
            [node("Sum", ["x", "skip"], ["s"]), layer_norm],
        ),
        "SkipLayerNorm+bias vs Add(bias)+Add+LayerNorm (fused again at load)": (
            hidden,
            ("x", "skip"),
            skip_fused,
            [node("Add", ["x", "bias"], ["xb"]), node("Add", ["xb", "skip"], ["s"]), layer_norm],
        ),
        "BiasGelu vs Gelu (bias in the GEMM)": (
            intermediate,
            ("x",),
            [node("BiasGelu", ["x", "bias"], ["y"], domain=MS)],
            [node("Gelu", ["x"], ["y"], domain=MS)],
        ),
        "BiasGelu vs Add(bias)+Gelu": (
            intermediate,
            ("x",),
            [node("BiasGelu", ["x", "bias"], ["y"], domain=MS)],
            [node("Add", ["x", "bias"], ["xb"]), node("Gelu", ["xb"], ["y"], domain=MS)],
        ),
    }


def timed(sessions, feeds, rounds: int) -> list[float]:
    times = [[] for _ in sessions]
    for session, feed in zip(sessions, feeds):
        session.run(None, feed)
    for _ in range(rounds):
        for k, (session, feed) in enumerate(zip(sessions, feeds)):
            start = time.perf_counter()
            session.run(None, feed)
            times[k].append(time.perf_counter() - start)
    return [float(np.median(t)) * 1000 for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=384, help="Hidden size (MiniLM: 384).")
    parser.add_argument("--intermediate", type=int, default=1536, help="FFN width (MiniLM: 1536).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    rng = np.random.default_rng(0)
    host = machine_isa()
    print(
        f"host {host['cpu']}, ISA {'/'.join(host['isa']) or 'no AVX2'}, onnxruntime {ort.__version__}, "
        f"{args.threads} threads, median of {args.rounds} interleaved runs (on-host)"
    )
    rows = []
    for name, (width, inputs, fused, standard) in pairs(args.hidden, args.intermediate).items():
        sessions = [
            ort.InferenceSession(graph(nodes, width, inputs), options, providers=["CPUExecutionProvider"])
            for nodes in (fused, standard)
        ]
        for batch, sequence in SHAPES:
            feed = {k: rng.standard_normal((batch, sequence, width)).astype(np.float32) for k in inputs}
            standard_feed = dict(feed)
            if "in the GEMM" in name:
                standard_feed["x"] = feed["x"] + constants(width)["bias"]
            fused_ms, standard_ms = timed(sessions, [feed, standard_feed], args.rounds)
            got = [s.run(None, f)[0] for s, f in zip(sessions, (feed, standard_feed))]
            difference = float(np.abs(got[0] - got[1]).max())
            rows.append(
                dict(
                    pair=name,
                    shape=f"b{batch}-s{sequence}",
                    fused_ms=fused_ms,
                    standard_ms=standard_ms,
                    ratio=standard_ms / fused_ms,
                    max_abs_difference=difference,
                )
            )
            print(
                f"  {name:<55} b{batch}-s{sequence:<4} fused {fused_ms:7.3f} ms  standard {standard_ms:7.3f} ms  "
                f"x{standard_ms / fused_ms:.2f}  (max |diff| {difference:.1e})"
            )
    if args.json:
        args.json.write_text(json.dumps({"host": host, "onnxruntime": ort.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
