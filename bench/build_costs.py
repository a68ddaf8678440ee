"""Measure what building the bundled recipes costs on this machine: wall time and peak RSS of the whole `edgeq build`
(`/usr/bin/time -v`), each stage's seconds and sampled peak (report.json), the build folder's bytes, and the work the
recipe asked for. The rows are what `edgeq plan`'s build-cost estimate is fitted to and checked against; run it on an
idle machine (other jobs inflate the times), with every cache of the recipes' sources warm or cold as stated.

    python bench/build_costs.py [--recipes minilm-int8-cpu tiny-llama-int4 smollm2-int4] [--out bench/data/build-costs.json]
    python bench/build_costs.py --held-out --out bench/data/build-costs-held-out.json

`--held-out` measures variants of the bundled recipes that the estimate was not fitted on (other sample counts,
shapes, targets and search settings), to state the estimate's error on builds it has not seen.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DEFAULT_RECIPES = ["minilm-int8-cpu", "tiny-llama-int4", "smollm2-int4"]
HELD_OUT = {  # name: (bundled recipe, {dotted key: value}) -- builds the build-cost fit never saw
    "smollm2-int4-light": (
        "smollm2-int4",
        {
            "quantization.calibration.samples": 8,
            "mixed_precision.proxy_samples": 4,
            "mixed_precision.measure_top": 6,
            "validation.samples": 8,
            "targets": ["x86-avx2"],
        },
    ),
    "minilm-int8-b1": (
        "minilm-int8-cpu",
        {"validation.shapes": [{"batch_size": 1}], "mixed_precision.proxy_samples": 16, "validation.samples": 100},
    ),
    "tiny-llama-int4-x86": (
        "tiny-llama-int4",
        {"targets": ["x86-avx2"], "validation.samples": 24, "mixed_precision.candidates": ["int4", "w8", "fp16"]},
    ),
}


def variant(name: str, scratch: Path) -> Path:
    """A held-out variant of a bundled recipe, written into `scratch`."""
    base, changes = HELD_OUT[name]
    return write_variant(base, changes, name, scratch)


def write_variant(base: str, changes: dict, name: str, scratch: Path) -> Path:
    """recipes/<base>.yaml with its data paths made absolute and `changes` ({dotted key: value}) applied, written
    into `scratch` as <name>.yaml."""
    import yaml

    recipe = yaml.safe_load((ROOT / "recipes" / f"{base}.yaml").read_text())
    for section in (recipe["quantization"]["calibration"], recipe["validation"]):
        section["data"]["path"] = str(ROOT / "recipes" / section["data"]["path"])
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = recipe
        for parent in parents:
            node = node[parent]
        node[key] = value
    recipe["name"] = name
    path = scratch / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def model_config(recipe_path: Path) -> dict:
    """The config.json of the recipe's model (its source is cached by the build that just ran)."""
    from edgeq.export.source import resolve_source
    from edgeq.recipe import load_recipe
    from edgeq.tasks import model_config as read

    return read(resolve_source(load_recipe(recipe_path).model.source))


def measure(recipe: str, scratch: Path) -> dict:
    out = scratch / recipe
    path = variant(recipe, scratch) if recipe in HELD_OUT else ROOT / "recipes" / f"{recipe}.yaml"
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "edgeq.cli", "build", str(path), "-o", str(out)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "EDGEQ_QUIET": "1"})
    wall = time.perf_counter() - started
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    if done.returncode not in (0, 3):
        raise SystemExit(f"{recipe}: the build failed: {done.stderr.strip().splitlines()[-1]}")
    report = json.loads((out / "report.json").read_text())
    return {
        "recipe": recipe,
        "wall_seconds": round(wall, 1),
        "peak_rss_bytes": peak_kb * 1024,
        "disk_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        "stages": [
            {k: s.get(k) for k in ("name", "seconds", "cached", "peak_rss_mb", "child_peak_rss_mb")}
            for s in report["stages"]
        ],
        "config": model_config(path),
        "fp32_bytes": next(a["size_bytes"] for a in report["artifacts"] if a["name"] == "fp32"),
        "search": {k: report.get("mixed_precision", {}).get(k) for k in ("proxy_passes", "full_evaluations")},
        "recipe_work": {k: report["recipe"][k] for k in ("quantization", "mixed_precision", "validation", "targets")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--recipes", nargs="+", default=None, help=f"bundled recipes or held-out variants {list(HELD_OUT)}"
    )
    parser.add_argument("--held-out", action="store_true", help="measure the held-out variants")
    parser.add_argument("--out", default=str(ROOT / "bench" / "data" / "build-costs.json"))
    args = parser.parse_args()
    args.recipes = args.recipes or (list(HELD_OUT) if args.held_out else DEFAULT_RECIPES)
    from edgeq.targets.runner import cpu_info

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeq-build-costs-") as tmp:
        for recipe in args.recipes:
            row = measure(recipe, Path(tmp))
            rows.append(row)
            print(
                f"{recipe}: {row['wall_seconds']:.0f} s, peak {row['peak_rss_bytes'] / 2**30:.2f} GiB, "
                f"{row['disk_bytes'] / 1e6:.0f} MB on disk",
                flush=True,
            )
    model, flags = cpu_info()
    isa = [f for f in ("avx512_vnni", "avx_vnni", "avx2") if f in flags]
    machine = {"cpu": model, "isa": isa, "machine": platform.machine()}
    out = Path(args.out)
    if out.is_file():  # rows of other recipes measured on this machine stay; these replace theirs
        kept = json.loads(out.read_text())
        if kept["machine"] == machine:
            measured = {r["recipe"] for r in rows}
            rows = [r for r in kept["builds"] if r["recipe"] not in measured] + rows
    out.write_text(json.dumps({"machine": machine, "builds": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
