"""Profile the default recipe's final model twice locally and once over SSH (a real OpenSSH server started on
127.0.0.1, the same machine), and print them side by side with the p50 agreement of the two local runs.

    python bench/profile_sides.py [--model build/minilm-int8-cpu/final/model.onnx]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from edgeq import api  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "build" / "minilm-int8-cpu" / "final" / "model.onnx")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--min-seconds", type=float, default=5.0)
    parser.add_argument("--sequence-length", type=int, default=16)
    args = parser.parse_args()
    if not args.model.is_file():
        sys.exit(f"Error: {args.model} not found; run `edgeq build recipes/minilm-int8-cpu.yaml` first")
    common = dict(runs=args.runs, min_seconds=args.min_seconds, sequence_length=args.sequence_length)
    rows = [("local #1", api.profile(args.model, **common)), ("local #2", api.profile(args.model, **common))]
    from sshd import SSHD, start_sshd

    if SSHD.exists():
        with tempfile.TemporaryDirectory(prefix="edgeq-bench-sshd-") as tmp:
            server = start_sshd(Path(tmp))
            try:
                rows.append(
                    (
                        "ssh 127.0.0.1",
                        api.profile(
                            args.model,
                            host=server.url,
                            ssh_key=str(server.client_key),
                            known_hosts=str(server.known_hosts),
                            remote_python=sys.executable,
                            **common,
                        ),
                    )
                )
            finally:
                server.process.terminate()
    header = f"{'profile':<15}{'mode':>9}{'runs':>7}{'min':>8}{'p50':>8}{'p90':>8}{'p99':>8}{'mean':>8}{'load ms':>9}{'first ms':>10}{'RSS MB':>8}"
    print(f"\n{args.model} on x86-avx512-vnni, {args.sequence_length} tokens, batch 1 (latency in ms)\n")
    print(header)
    print("-" * len(header))
    for name, p in rows:
        lat = p["latency_ms"]
        print(
            f"{name:<15}{p['mode']:>9}{p['runs']:>7}{lat['min']:>8.3f}{lat['p50']:>8.3f}{lat['p90']:>8.3f}{lat['p99']:>8.3f}"
            f"{lat['mean']:>8.3f}{p['load_ms']:>9.1f}{p['first_run_ms']:>10.2f}{p['peak_rss_mb']:>8.0f}"
        )
    a, b = rows[0][1]["latency_ms"]["p50"], rows[1][1]["latency_ms"]["p50"]
    print(f"\nlocal #1 vs #2: p50 differs by {abs(a - b) / min(a, b):.1%}")


if __name__ == "__main__":
    main()
