"""The few lines a build ends with: per target, the artifact it is served, the verdict, the headline fidelity,
size and latency, and where the full report is (report.html). Also what `edgeq compare` puts side by side."""

from __future__ import annotations

from edgeq.tasks import METRICS
from edgeq.tasks.metrics import headline_order

HEADLINE = headline_order(METRICS)  # the metrics a summary shows, most telling first


def summary_rows(report: dict) -> list[dict]:
    """One row per target device: what it is served and how that measured."""
    finals = report.get("finals") or {}
    sizes = {a["name"]: a for a in report["artifacts"]}
    rows = []
    for v in report["validations"]:
        served = finals.get(v["device"], {}).get("artifact", report["final_artifact"])
        if v["artifact"] != served:
            continue
        metrics = {k: v["metrics"][k] for k in HEADLINE if isinstance(v["metrics"].get(k), (int, float))}
        rows.append(
            {
                "device": v["device"],
                "mode": v["mode"],
                "artifact": served,
                "passed": v["passed"],
                "metrics": dict(list(metrics.items())[:3]),
                "size_mb": round(sizes[served]["size_bytes"] / 1e6, 2),
                "size_ratio": sizes[served]["size_ratio"],
                "p50_ms": (v.get("latency_ms") or {}).get("p50"),
                "latency_ratio": v.get("latency_ratio_to_reference"),
                "fallback_nodes": v.get("fallback_nodes", 0),
                "path": finals.get(v["device"], {}).get("path", report["final"]),
                "failures": v["failures"],
            }
        )
    return rows


def table_console():
    """A console for result tables: the terminal's width, or 160 columns when the output is a file or a pipe (rich's
    80 would fold every cell of a build log into a column of word fragments)."""
    import os
    import sys

    from rich.console import Console

    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(width=160) if wide else Console()


def print_summary(report: dict, out_dir, console=None) -> None:
    from rich.table import Table

    console = console or table_console()
    table = Table(
        title=f"edgeq build {report['recipe']['name']}: {'PASSED' if report['passed'] else 'FAILED'}",
        title_justify="left",
    )
    for column in ("target", "mode", "artifact", "verdict", "fidelity vs FP32", "size", "p50 latency", "model"):
        table.add_column(column)
    for row in summary_rows(report):
        table.add_row(
            row["device"],
            row["mode"],
            row["artifact"],
            "[green]pass[/green]" if row["passed"] else "[red]fail[/red]",
            _metrics(row["metrics"]),
            f"{row['size_mb']:.1f} MB ({row['size_ratio']:.0%})",
            _latency(row),
            row["path"],
        )
    console.print(table)
    for row in summary_rows(report):
        for failure in row["failures"]:
            console.print(f"[red]{row['device']}: {failure}[/red]")
    print(f"report: {out_dir / 'report.html'}  (also report.md, report.json)")  # one unwrapped line: a path to click


def print_comparison(builds: list[str], rows: list[list[dict]], console=None) -> None:
    from rich.table import Table

    console = console or table_console()
    table = Table(title="edgeq compare", title_justify="left")
    table.add_column("target")
    for name in builds:
        table.add_column(name)
    devices = list(dict.fromkeys(r["device"] for build in rows for r in build))
    for device in devices:
        cells = []
        for build in rows:
            row = next((r for r in build if r["device"] == device), None)
            cells.append(
                "—"
                if row is None
                else f"{row['artifact']} {'pass' if row['passed'] else 'FAIL'} ({row['mode']})\n{_metrics(row['metrics'])}\n"
                f"{row['size_mb']:.1f} MB ({row['size_ratio']:.0%}), {_latency(row)}"
            )
        table.add_row(device, *cells)
    console.print(table)


def _metrics(metrics: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in metrics.items())


def _latency(row: dict) -> str:
    if row["p50_ms"] is None:
        return "—"
    ratio = f" ({row['latency_ratio']:.2f}× FP32)" if row["latency_ratio"] else ""
    return f"{row['p50_ms']:.2f} ms{ratio}"
