"""One picture across targets and precisions: every validated artifact of one or more builds (a sweep's cells,
`edgeq compare`'s folders) as a point, fidelity against size and against p50 latency, one colour per target, one
marker per precision (the artifact: fp32, int8, mixed, w8a16 ...), the Pareto front of each target drawn and its
points labelled, the mode of every point said (filled: on-host, hollow: emulated, ringed: remote), and the table
below. Same rules as report.html: one self-contained page, inline SVG, no script, nothing fetched."""

from __future__ import annotations

from html import escape
from pathlib import Path

from edgeq.report_html import CSS, PALETTE, _axes, _span
from edgeq.tasks import METRICS
from edgeq.tasks.metrics import headline_order, higher_is_better

HEADLINE = headline_order(METRICS)
HIGHER = higher_is_better(METRICS)
MAX_METRICS = 3  # headline metrics drawn, most telling first
MARKERS = ("circle", "square", "triangle", "diamond", "cross", "star")


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
    return {"circle": "●", "square": "■", "triangle": "▲", "diamond": "◆", "cross": "✚", "star": "★"}[marker]


def scatter_with_fronts(points, x_key, metric, x_label, colours, markers, width=760, height=380) -> str:
    usable = [p for p in points if p.get(x_key) is not None and metric in p["metrics"]]
    if not usable:
        return "<p class=note>No point has both figures.</p>"
    left, bottom, pad = 70, 40, 16
    x0, x1 = _span([p[x_key] for p in usable])
    y0, y1 = _span([p["metrics"][metric] for p in usable])

    def at(p):
        return (
            left + (p[x_key] - x0) / (x1 - x0) * (width - left - pad),
            height - bottom - (p["metrics"][metric] - y0) / (y1 - y0) * (height - bottom - pad),
        )

    parts = [_axes(width, height, left, bottom, pad, x_label, metric.replace("_", " "), (x0, x1), (y0, y1))]
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


def _short_label(point: dict) -> str:
    label = point["label"]
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
    }
    ring = (
        f"<circle cx='{x:.1f}' cy='{y:.1f}' r='9' fill='none' stroke='{colour}' stroke-dasharray='2 2'/>"
        if point["mode"] == "remote"
        else ""
    )
    return f"<g class=point data-mode='{escape(point['mode'])}'>{ring}{shapes[marker]}<title>{escape(_tooltip(point, metric))}</title></g>"


def _star(x: float, y: float) -> str:
    import math

    corners = []
    for k in range(10):
        radius = 6.5 if k % 2 == 0 else 2.8
        angle = -math.pi / 2 + k * math.pi / 5
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
        points += build_points(json.loads(report.read_text()), row["build_dir"], label)
    return points
