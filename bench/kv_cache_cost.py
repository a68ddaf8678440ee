"""What an INT8 KV cache costs a real language model: the bundled LM recipes built with `quantization.kv_cache: int8`
on this host (x86 only), where the build validates the search's model with an FP32 cache and with the INT8 one on
the same held-out texts; the report's `kv_cache.cost` is the difference. Writes bench/data/kv-cache-cost.json.

    python bench/kv_cache_cost.py [--recipes tiny-llama-int4 smollm2-int4]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    from build_costs import write_variant

    from edgeq import api
    from edgeq.targets.runner import cpu_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["tiny-llama-int4", "smollm2-int4"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "data" / "kv-cache-cost.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeq-kv-") as tmp:
        for base in args.recipes:
            changes = {
                "quantization.kv_cache": "int8",
                "targets": ["x86-avx2"],
                "profile": None,
            }  # the cost is fidelity
            path = write_variant(base, changes, f"{base}-kv8", Path(tmp))
            report = api.build(path, output=Path(tmp) / base).report
            metrics = {v["artifact"]: v["metrics"] for v in report["validations"]}
            kv = report["kv_cache"]
            keep = ("kl_divergence_mean", "next_token_top1_agreement", "perplexity", "greedy_match_tokens")
            row = {
                "recipe": base,
                "texts": next(v["samples"] for v in report["validations"]),
                "fp32_cache": {k: metrics[kv["from_artifact"]].get(k) for k in keep},
                "int8_cache": {k: metrics["kv8"].get(k) for k in keep},
                "cost": kv["cost"][0],
                "from_artifact": kv["from_artifact"],
            }
            rows.append(row)
            print(
                f"{base}: FP32 cache KL {row['fp32_cache']['kl_divergence_mean']:.5f} top-1 "
                f"{row['fp32_cache']['next_token_top1_agreement']:.4f}; INT8 cache KL "
                f"{row['int8_cache']['kl_divergence_mean']:.5f} top-1 {row['int8_cache']['next_token_top1_agreement']:.4f}",
                flush=True,
            )
    model, flags = cpu_info()
    isa = [f for f in ("avx512_vnni", "avx_vnni", "avx2") if f in flags]
    Path(args.out).write_text(
        json.dumps({"machine": {"cpu": model, "isa": isa, "machine": platform.machine()}, "builds": rows}, indent=2)
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
