"""One picture across targets and precisions: every validated artifact of one or more builds (a sweep's cells,
`edgeq compare`'s folders) as a point, fidelity against size and against p50 latency, one colour per target, one
marker per precision (the artifact: fp32, int8, mixed, w8a16 ...), the Pareto front of each target drawn and its
points labelled, the mode of every point said (filled: on-host, hollow: emulated, ringed: remote), and the table
below. Same rules as report.html: one self-contained page, inline SVG, no script, nothing fetched."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path

from edgeq.report_html import CSS, PALETTE, _span, axis_lines
from edgeq.tasks import METRICS
from edgeq.tasks.metrics import headline_order, higher_is_better

HEADLINE = headline_order(METRICS)
HIGHER = higher_is_better(METRICS)
MAX_METRICS = 3  # headline metrics drawn, most telling first
NINES_CAP = 5  # a fidelity of 1 - 1e-5 or better sits at the top of a "nines" axis
MARKERS = ("circle", "square", "triangle", "diamond", "cross", "star", "down", "hexagon")


def build_points(report: dict, build: str, label: str | None = None) -> list[dict]:
    """Every (artifact, device) validation of a build as a point: its fidelity, size, p50 and (for the artifact a
    device is served, which the build profiled) peak RSS."""
    sizes = {a["name"]: a for a in report["artifacts"]}
    finals = report.get("finals") or {}
    profiles = {p["device"]: p for p in report.get("profiles") or []}
    points = []
    for v in report["validations"]:
        served = finals.get(v["device"], {}).get("artifact", report["final_artifact"]) == v["artifact"]
        profile = profiles.get(v["device"]) if served else None
        size = sizes.get(v["artifact"], {})
        points.append(
            {
                "build": build,
                "label": label or report["recipe"]["name"],
                "target": v["device"],
                "artifact": v["artifact"],
                "served": served,
                "mode": v["mode"],
                "passed": v["passed"],
                "metrics": {k: x for k, x in v["metrics"].items() if isinstance(x, (int, float))},
                "size_mb": round(size["size_bytes"] / 1e6, 3) if "size_bytes" in size else None,
                "size_ratio": size.get("size_ratio"),
                "p50_ms": (v.get("latency_ms") or {}).get("p50"),
                "peak_rss_mb": profile.get("peak_rss_mb") if profile else None,
            }
        )
    return points


def pareto_front(points: list[dict], x_key: str, metric: str) -> list[dict]:
    """The points no other point beats on both axes: smaller x, and a better metric (its direction)."""
    sign = 1 if metric in HIGHER else -1
    usable = [p for p in points if p.get(x_key) is not None and metric in p["metrics"]]
    ranked = sorted(usable, key=lambda p: (p[x_key], -sign * p["metrics"][metric]))
    front, best = [], None
    for point in ranked:
        value = sign * point["metrics"][metric]
        if best is None or value > best:
            front.append(point)
            best = value
    return front


def plotted_metrics(points: list[dict]) -> list[str]:
    found = {k for p in points for k in p["metrics"]}
    return [m for m in HEADLINE if m in found][:MAX_METRICS]


def pareto_html(title: str, points: list[dict], builds: list[str], intro: str = "") -> str:
    targets = list(dict.fromkeys(p["target"] for p in points))
    precisions = list(dict.fromkeys(p["artifact"] for p in points))
    colours = {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(targets)}
    markers = {a: MARKERS[i % len(MARKERS)] for i, a in enumerate(precisions)}
    sections = []
    for metric in plotted_metrics(points):
        for x_key, x_label in (("size_mb", "size (MB)"), ("p50_ms", "p50 latency (ms), as measured in its mode")):
            sections.append(
                f"<h2>{escape(metric.replace('_', ' '))} against {escape(x_label.split(' (')[0])}</h2>"
                + scatter_with_fronts(points, x_key, metric, x_label, colours, markers)
            )
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1><p class=sub>{intro}{len(points)} validated artifacts of {len(builds)} build(s), "
        f"{len(targets)} target(s). Colour: target; marker: precision; filled: measured "
        "<span class=mode>on-host</span>, hollow: <span class=mode>emulated</span> (a stand-in: fidelity is the "
        "device's numerics, time is the stand-in's), ringed: <span class=mode>remote</span>. The line joins each "
        "target's Pareto front (no other point of that target is both smaller or faster and more faithful); its "
        "points are labelled. Hover a point for its figures.</p>"
        + legend(colours, markers)
        + "".join(sections)
        + points_table(points)
        + "</body></html>\n"
    )


def legend(colours: dict, markers: dict) -> str:
    items = [f"<span style='color:{c};font-weight:700'>■</span> {escape(t)}" for t, c in colours.items()] + [
        f"{_marker_symbol(m)} {escape(a)}" for a, m in markers.items()
    ]
    return "<p class=note>" + " &nbsp; ".join(items) + "</p>"


def _marker_symbol(marker: str) -> str:
    symbols = {"circle": "●", "square": "■", "triangle": "▲", "diamond": "◆", "cross": "✚", "star": "★", "down": "▼"}
    return symbols.get(marker, "⬢")


@dataclass
class Scale:
    """An axis: `to(value)` in 0..1 of the plot, and its ticks (value, text). Linear; logarithmic for a latency that
    spans an emulator's seconds and a CPU's milliseconds; "nines" (1 - v on a log scale) for a fidelity bounded by 1,
    where 0.99, 0.999 and 0.9999 are the differences that matter."""

    to: Callable[[float], float]
    ticks: list[tuple[float, str]]


def linear_scale(values: list[float]) -> Scale:
    low, high = _span(values)
    ticks = [low + (high - low) * k / 4 for k in range(5)]
    return Scale(lambda v: (v - low) / (high - low), [(t, f"{t:.3g}") for t in ticks])


def log_scale(values: list[float]) -> Scale:
    low, high = math.log10(min(values)) - 0.05, math.log10(max(values)) + 0.05
    ticks = [10.0**e for e in range(math.floor(low), math.ceil(high) + 1) if low <= e <= high]
    return Scale(lambda v: (math.log10(max(v, 1e-9)) - low) / (high - low), [(t, f"{t:g}") for t in ticks])


def nines_scale(values: list[float]) -> Scale:
    """For v in [0, 1], higher better: the position is -log10(1 - v), capped at NINES_CAP (a perfect 1 sits there)."""

    def nines(v: float) -> float:
        return min(-math.log10(max(1.0 - v, 10.0**-NINES_CAP)), NINES_CAP)

    low, high = min(map(nines, values)), max(map(nines, values))
    low, high = max(low - 0.15, 0.0), high + 0.15
    steps = [float(k) for k in range(math.ceil(low), math.floor(high) + 1)]
    if len(steps) < 3:  # within one or two nines: ticks at quarters of the span
        steps = [low + (high - low) * k / 4 for k in range(5)]
    ticks = [(1 - 10.0**-n, f"{1 - 10.0**-n:.{max(1, math.ceil(n) + (0 if n == int(n) else 1))}f}") for n in steps]
    return Scale(lambda v: (nines(v) - low) / (high - low), ticks)


def scale_for(values: list[float], metric: str | None) -> Scale:
    """Nines for a fidelity in [0, 1] that is better higher, logarithmic for times spanning more than a decade,
    linear otherwise."""
    if metric is not None and metric in HIGHER and all(0 <= v <= 1 for v in values) and min(values) < 1:
        return nines_scale(values)
    if metric is None and min(values) > 0 and max(values) / min(values) > 10:
        return log_scale(values)
    return linear_scale(values)


def scatter_with_fronts(points, x_key, metric, x_label, colours, markers, width=760, height=380) -> str:
    usable = [p for p in points if p.get(x_key) is not None and metric in p["metrics"]]
    if not usable:
        return "<p class=note>No point has both figures.</p>"
    left, bottom, pad = 70, 40, 16
    xs = scale_for([p[x_key] for p in usable], None)
    ys = scale_for([p["metrics"][metric] for p in usable], metric)

    def at(p):
        return (
            left + xs.to(p[x_key]) * (width - left - pad),
            height - bottom - ys.to(p["metrics"][metric]) * (height - bottom - pad),
        )

    parts = [_frame(width, height, left, bottom, pad, x_label, metric.replace("_", " "), xs, ys)]
    placed: list[tuple[float, float]] = []  # labels already written: the next one near them moves down a line
    for target, colour in colours.items():
        front = pareto_front([p for p in usable if p["target"] == target], x_key, metric)
        if len(front) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in map(at, front))
            parts.append(f"<polyline class=front points='{path}' fill='none' stroke='{colour}' stroke-width='1.5'/>")
        for point in front:
            x, y = at(point)
            right = x > 0.6 * width  # a label near the right edge is written to the left of its point
            y -= 7
            while any(abs(y - py) < 12 and abs(x - px) < 150 for px, py in placed):
                y += 12
            placed.append((x, y))
            parts.append(
                f"<text class=front-label x='{x - 8 if right else x + 8:.1f}' y='{y:.1f}' fill='{colour}' "
                f"text-anchor='{'end' if right else 'start'}'>"
                f"{escape(point['artifact'])} · {escape(_short_label(point))} · {escape(point['mode'])}</text>"
            )
    for point in usable:
        parts.append(_mark(*at(point), markers[point["artifact"]], colours[point["target"]], point, metric))
    return (
        f"<svg class=plot role=img width={width} height={height} viewBox='0 0 {width} {height}'>{''.join(parts)}</svg>"
    )


def _frame(width, height, left, bottom, pad, x_label, y_label, xs: Scale, ys: Scale) -> str:
    """Axes, labels and grid ticks at each scale's own tick values."""
    parts = axis_lines(width, height, left, bottom, pad, x_label, y_label)
    for value, text in xs.ticks:
        px = left + xs.to(value) * (width - left - pad)
        parts.append(
            f"<line x1='{px:.1f}' y1='{pad}' x2='{px:.1f}' y2='{height - bottom}' stroke='#edf2f7'/>"
            f"<text x='{px:.1f}' y='{height - bottom + 14}' text-anchor='middle'>{escape(text)}</text>"
        )
    for value, text in ys.ticks:
        py = height - bottom - ys.to(value) * (height - bottom - pad)
        parts.append(
            f"<line x1='{left}' y1='{py:.1f}' x2='{width - pad}' y2='{py:.1f}' stroke='#edf2f7'/>"
            f"<text x='{left - 4}' y='{py + 4:.1f}' text-anchor='end'>{escape(text)}</text>"
        )
    return "".join(parts)


def _short_label(point: dict) -> str:
    label = point.get("setting") or point["label"]
    return label if len(label) <= 28 else "…" + label[-27:]


def _mark(x: float, y: float, marker: str, colour: str, point: dict, metric: str) -> str:
    fill = colour if point["mode"] == "on-host" else "#fff"
    style = f"fill='{fill}' stroke='{colour}' stroke-width='2'"
    shapes = {
        "circle": f"<circle cx='{x:.1f}' cy='{y:.1f}' r='5' {style}/>",
        "square": f"<rect x='{x - 4.5:.1f}' y='{y - 4.5:.1f}' width='9' height='9' {style}/>",
        "triangle": f"<polygon points='{x:.1f},{y - 6:.1f} {x - 5.5:.1f},{y + 4:.1f} {x + 5.5:.1f},{y + 4:.1f}' {style}/>",
        "diamond": f"<polygon points='{x:.1f},{y - 6:.1f} {x + 6:.1f},{y:.1f} {x:.1f},{y + 6:.1f} {x - 6:.1f},{y:.1f}' {style}/>",
        "cross": f"<path d='M{x - 5:.1f},{y:.1f}H{x + 5:.1f}M{x:.1f},{y - 5:.1f}V{y + 5:.1f}' {style} stroke-width='3'/>",
        "star": f"<polygon points='{_star(x, y)}' {style}/>",
        "down": f"<polygon points='{x:.1f},{y + 6:.1f} {x - 5.5:.1f},{y - 4:.1f} {x + 5.5:.1f},{y - 4:.1f}' {style}/>",
        "hexagon": f"<polygon points='{_star(x, y, 6, 5.5, 5.5)}' {style}/>",
    }
    ring = (
        f"<circle cx='{x:.1f}' cy='{y:.1f}' r='9' fill='none' stroke='{colour}' stroke-dasharray='2 2'/>"
        if point["mode"] == "remote"
        else ""
    )
    return f"<g class=point data-mode='{escape(point['mode'])}'>{ring}{shapes[marker]}<title>{escape(_tooltip(point, metric))}</title></g>"


def _star(x: float, y: float, points: int = 5, outer: float = 6.5, inner: float = 2.8) -> str:
    corners = []
    for k in range(2 * points):
        radius = outer if k % 2 == 0 else inner
        angle = -math.pi / 2 + k * math.pi / points
        corners.append(f"{x + radius * math.cos(angle):.1f},{y + radius * math.sin(angle):.1f}")
    return " ".join(corners)


def _tooltip(point: dict, metric: str) -> str:
    p50 = "—" if point["p50_ms"] is None else f"{point['p50_ms']:.3g} ms"
    return (
        f"{point['target']} ({point['mode']}) · {point['artifact']} · {point['label']}: {metric} "
        f"{point['metrics'][metric]:.5g}, {point['size_mb']} MB, p50 {p50}, "
        f"{'passed' if point['passed'] else 'FAILED'}"
    )


def points_table(points: list[dict]) -> str:
    metrics = plotted_metrics(points)
    head = "".join(
        f"<th>{escape(h)}</th>"
        for h in (
            "target",
            "build",
            "artifact",
            "mode",
            *[m.replace("_", " ") for m in metrics],
            "size",
            "p50",
            "peak RSS",
            "passed",
        )
    )
    rows = []
    for p in sorted(points, key=lambda p: (p["target"], p["label"], p["artifact"])):
        cells = [
            escape(p["target"]),
            escape(p["label"]),
            escape(p["artifact"]) + (" (served)" if p["served"] else ""),
            f"<span class=mode>{escape(p['mode'])}</span>",
            *[_num(p["metrics"].get(m), ".5g") for m in metrics],
            "—" if p["size_mb"] is None else f"{p['size_mb']:.1f} MB ({p['size_ratio']:.0%})",
            _num(p["p50_ms"], ".3g", " ms"),
            _num(p["peak_rss_mb"], ".0f", " MB"),
            "<span class=pass>yes</span>" if p["passed"] else "<span class=fail>no</span>",
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<h2>Every validated artifact</h2><table><tr>{head}</tr>{''.join(rows)}</table>"


def _num(value, spec: str, unit: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{unit}"


def sweep_points(rows: list[dict]) -> list[dict]:
    """The points of a sweep's finished cells, each labelled by its recipe, target and overrides."""
    import json

    points = []
    for row in rows:
        report = Path(row["build_dir"]) / "report.json"
        if not report.is_file():
            continue
        setting = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in row["overrides"].items())
        label = Path(row["recipe"]).stem + (f" [{setting}]" if setting else "")
        found = build_points(json.loads(report.read_text()), row["build_dir"], label)
        for point in found:
            point["setting"] = ", ".join(str(v) for v in row["overrides"].values())  # what differs between cells
        points += found
    return points
