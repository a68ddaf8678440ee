"""Fit edgeq.build_cost's constants to measured builds and state the error: in the fit, and leave-one-out (each build
estimated by the constants fitted to the others: the error on a build the fit has not seen).

    python bench/fit_build_costs.py [--fit bench/data/build-costs.json] [--held-out bench/data/build-costs-held-out.json]
                                    [--write]

Each measured build's work is counted from its recipe (a bundled one, or build_costs.py's held-out variant) and the
model's config.json, exactly as `edgeq plan` counts it; the seconds constants are fitted by non-negative least squares
on each stage's relative error (export = start-up to quantization, search, validation, profile), the peak constants
on the whole build's relative error. Both files' builds are fitted: the bundled recipes (build-costs.json) and their
variants (build-costs-held-out.json, other texts, shapes, targets and search settings). The variants were first
measured as a held-out set against a fit of the three bundled builds alone: seconds +18% to +38% (the smallest
builds, dominated by fixed costs, worst), peak -13% to +1%; with six builds, leave-one-out states that error.
`--write` puts the constants and the errors into src/edgeq/build_cost_fit.json.
"""

from __future__ import annotations

import argparse
import json
import pprint
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

STAGES = {
    "export": ("export", "optimize", "quantize"),
    "search": ("mixed_precision",),
    "validate": ("validate",),
    "profile": ("profile",),
}


def measured_stages(row: dict) -> dict[str, float]:
    """Seconds per estimate stage; what no stage timed (start-up, preflight, the report) goes to export."""
    found = {stage: sum(s["seconds"] for s in row["stages"] if s["name"] in names) for stage, names in STAGES.items()}
    found["export"] += row["wall_seconds"] - sum(s["seconds"] for s in row["stages"])
    return found


def counted_work(row: dict, scratch: Path):
    """The Work edgeq.build_cost counts for a measured build: its recipe (a bundled one, or a held-out variant) and
    the model's config.json recorded beside it."""
    from build_costs import HELD_OUT, variant

    from edgeq.build_cost import work
    from edgeq.recipe import load_recipe
    from edgeq.targets import load_target
    from edgeq.tasks import TASKS, positions_in

    name = row["recipe"]
    recipe = load_recipe(variant(name, scratch) if name in HELD_OUT else ROOT / "recipes" / f"{name}.yaml")
    config = row["config"]
    recipe.fit_to_model(positions_in(config))
    emulated = [load_target(t).runs_in_stand_in for t in recipe.targets]
    return work(config, recipe, emulated, TASKS[recipe.model.task].generates)


def fit(rows: list[dict], works: dict) -> dict:
    from scipy.optimize import nnls

    from edgeq.build_cost import FIT, peak_terms, time_terms

    seconds_keys, peak_keys = list(FIT["seconds"]), list(FIT["peak"])
    a, b = [], []
    for row in rows:
        terms, measured = time_terms(works[row["recipe"]]), measured_stages(row)
        for stage, value in measured.items():
            a.append([terms[stage].get(k, 0.0) / value for k in seconds_keys])
            b.append(1.0)
    seconds, _ = nnls(np.array(a), np.array(b))
    a = [[peak_terms(works[r["recipe"]])[k] / r["peak_rss_bytes"] for k in peak_keys] for r in rows]
    peak, _ = nnls(np.array(a), np.ones(len(rows)))
    return {
        **FIT,
        "seconds": {k: float(f"{v:.4g}") for k, v in zip(seconds_keys, seconds)},
        "peak": {k: float(f"{v:.4g}") for k, v in zip(peak_keys, peak)},
    }


def errors(rows: list[dict], works: dict, constants: dict) -> dict:
    """Per build: estimated against measured seconds, peak and disk, as signed relative errors."""
    from edgeq.build_cost import estimate

    out = {}
    for row in rows:
        guess = estimate(works[row["recipe"]], constants)
        out[row["recipe"]] = {
            "seconds": [guess["seconds"], row["wall_seconds"], round(guess["seconds"] / row["wall_seconds"] - 1, 3)],
            "peak_rss_bytes": [
                guess["peak_rss_bytes"],
                row["peak_rss_bytes"],
                round(guess["peak_rss_bytes"] / row["peak_rss_bytes"] - 1, 3),
            ],
            "disk_bytes": [
                guess["disk_bytes"],
                row["disk_bytes"],
                round(guess["disk_bytes"] / row["disk_bytes"] - 1, 3),
            ],
        }
    return out


def check(rows: list[dict], works: dict, bound: float) -> int:
    from edgeq.build_cost import FIT

    status = 0
    for recipe, found in errors(rows, works, FIT).items():
        for quantity in ("seconds", "peak_rss_bytes"):
            estimated, measured, error = found[quantity]
            ok = abs(error) <= bound
            status |= not ok
            print(
                f"{recipe:24} {quantity:15} estimated {estimated:>14,} measured {measured:>14,.0f} {error:+.1%} "
                f"{'ok' if ok else 'OVER ' + format(bound, '.0%')}"
            )
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fit", default=str(ROOT / "bench" / "data" / "build-costs.json"))
    parser.add_argument("--held-out", default=str(ROOT / "bench" / "data" / "build-costs-held-out.json"))
    parser.add_argument("--write", action="store_true", help="write the constants into src/edgeq/build_cost.py")
    parser.add_argument(
        "--check",
        type=float,
        metavar="BOUND",
        help="no fit: exit 1 unless edgeq.build_cost's committed FIT estimates every build's seconds "
        "and peak within BOUND (0.3: 30%%)",
    )
    args = parser.parse_args()
    fitted = json.loads(Path(args.fit).read_text())
    held = json.loads(Path(args.held_out).read_text()) if Path(args.held_out).is_file() else {"builds": []}
    rows = fitted["builds"] + held["builds"]
    with tempfile.TemporaryDirectory() as tmp:
        works = {r["recipe"]: counted_work(r, Path(tmp)) for r in rows}
    if args.check is not None:
        raise SystemExit(check(rows, works, args.check))
    constants = fit(rows, works)
    m = fitted["machine"]
    constants["machine"] = f"{m['cpu']}, {'/'.join(m['isa']) or 'no AVX2'}, {m['machine']}, 2 cores"
    sizes = [r["fp32_bytes"] for r in rows]
    constants["fitted_fp32_bytes"] = [min(sizes), max(sizes)]
    left_out = {}
    for row in rows:
        others = fit([r for r in rows if r is not row], works)
        left_out.update(errors([row], works, others))
    constants["error"] = {
        "fitted": errors(rows, works, constants),
        "left_out": left_out,
        "columns": "[estimated, measured, estimated/measured - 1]",
    }
    print(pprint.pformat(constants, width=118, sort_dicts=False))
    if args.write:
        from edgeq.build_cost import FIT_FILE

        FIT_FILE.write_text(json.dumps(constants, indent=1) + "\n")
        print(f"wrote {FIT_FILE}")


if __name__ == "__main__":
    main()
