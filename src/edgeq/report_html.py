"""report.html: one self-contained page (inline CSS and SVG, no script, nothing fetched) that a person reads top to
bottom: the verdict per target, the trade-off the search explored, each island's sensitivity and precision with
its reason, fidelity per shape, latency per device, placement and fallbacks, and where each figure was measured."""

from __future__ import annotations

import math
from html import escape

PALETTE = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795", "#b7791f", "#4a5568", "#e53e3e"]
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:24px;
color:#1a202c;line-height:1.45}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:32px 0 8px;border-bottom:1px solid #e2e8f0;padding-bottom:4px}
.sub{color:#4a5568;margin:0 0 16px}.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #e2e8f0;border-radius:8px;padding:12px 16px;min-width:220px}
.pass{color:#276749;font-weight:700}.fail{color:#c53030;font-weight:700}
.mode{display:inline-block;font-size:.8em;padding:1px 6px;border-radius:4px;background:#edf2f7;color:#2d3748}
table{border-collapse:collapse;font-size:.88em;margin:8px 0}td,th{border:1px solid #e2e8f0;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f7fafc}td.num{text-align:right;font-variant-numeric:tabular-nums}
svg.plot{display:block;margin:8px 0;background:#fff}svg text{font-size:11px;fill:#2d3748}
.note{color:#4a5568;font-size:.88em}.chosen{font-weight:700}
"""


def render_html(report: dict) -> str:
    recipe = report["recipe"]
    sections = [
        _verdicts(report),
        _tradeoff(report),
        _islands(report),
        _shapes(report),
        _latency(report),
        _placement(report),
        _divergences(report),
        _environment(report),
    ]
    title = f"edgeq report: {recipe['name']}"
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1><p class=sub>Model <code>{escape(recipe['model']['source'])}</code> "
        f"({escape(report.get('task', ''))}); {report['total_seconds']:.0f} s; edgeq {escape(report['edgeq_version'])}. "
        f"Every figure was measured by this build; each says where: <span class=mode>on-host</span> (the device's "
        f"own execution provider on this machine), <span class=mode>emulated</span> (a stand-in), "
        f"<span class=mode>remote</span> (the real device).</p>"
        + "".join(s for s in sections if s)
        + "</body></html>\n"
    )


# ------------------------------------------------------------------ sections
def _verdicts(report: dict) -> str:
    finals = report.get("finals") or {}
    cards = []
    for v in report["validations"]:
        served = finals.get(v["device"], {}).get("artifact", report["final_artifact"])
        if v["artifact"] != served:
            continue
        size = next((a for a in report["artifacts"] if a["name"] == v["artifact"]), {})
        metric = _headline(v["metrics"])
        latency = v.get("latency_ms") or {}
        decoding = next(
            (p for p in report.get("profiles", []) if p["device"] == v["device"] and "decode_tokens_per_s" in p), None
        )
        speed = (
            (
                f"<div>{decoding['decode_tokens_per_s']:.1f} tokens/s decoding, first token in "
                f"{decoding['ttft_ms']['p50']:.0f} ms</div>"
            )
            if decoding
            else ""
        )
        cards.append(
            f"<div class=card><div><b>{escape(v['device'])}</b> <span class=mode>{escape(v['mode'])}</span></div>"
            f"<div class={'pass' if v['passed'] else 'fail'}>{'PASSED' if v['passed'] else 'FAILED'}</div>"
            f"<div>artifact <b>{escape(v['artifact'])}</b> → <code>{escape(finals.get(v['device'], {}).get('path', report['final']))}</code></div>"
            f"<div>{escape(metric)}</div><div>size {size.get('size_bytes', 0) / 1e6:.1f} MB "
            f"({size.get('size_ratio', 0):.1%} of FP32)</div>"
            f"<div>p50 {latency.get('p50', float('nan')):.2f} ms{' a prompt pass' if decoding else ''} on "
            f"{escape(v['provider'])}</div>{speed}"
            + "".join(f"<div class=fail>{escape(f)}</div>" for f in v.get("failures", []))
            + "</div>"
        )
    return f"<h2>Verdict per target</h2><div class=cards>{''.join(cards)}</div>"


def _headline(metrics: dict) -> str:
    from edgeq.summary import HEADLINE

    for key in HEADLINE:
        if isinstance(metrics.get(key), (int, float)):
            return f"{key.replace('_', ' ')} {metrics[key]:.4g}"
    return ""


def _tradeoff(report: dict) -> str:
    """Every configuration the search evaluated (size vs its judged metric), the artifacts, the chosen one."""
    mp = report.get("mixed_precision") or {}
    key = _judged_metric(mp)
    points = []
    sizes = {c["index"]: c["size_ratio"] for c in mp.get("configurations", [])}
    for e in mp.get("evaluations", []):
        value, size = e["metrics"].get(key), sizes.get(e["configuration"], mp.get("size_ratio"))
        if isinstance(value, (int, float)) and size is not None:
            chosen = e["configuration"] == mp.get("chosen_configuration")
            points.append(
                (
                    size,
                    value,
                    f"configuration {e['configuration']}: {key} {value:.5g}, size {size:.1%}"
                    f"{' (chosen)' if chosen else ''} → {'meets' if e['passed'] else 'misses'} the budget",
                    "#c53030" if chosen else ("#38a169" if e["passed"] else "#a0aec0"),
                    chosen,
                )
            )
    for v in report["validations"]:
        if v["artifact"] == "fp32" or not isinstance(v["metrics"].get(key), (int, float)):
            continue
        size = next((a["size_ratio"] for a in report["artifacts"] if a["name"] == v["artifact"]), None)
        if size is not None:
            points.append(
                (
                    size,
                    v["metrics"][key],
                    f"{v['artifact']} validated on {v['device']} ({v['mode']}): "
                    f"{key} {v['metrics'][key]:.5g}, size {size:.1%}",
                    "#2b6cb0",
                    False,
                )
            )
    if not points:
        return ""
    svg = _scatter(points, "size (share of FP32)", key.replace("_", " "))
    return (
        "<h2>Trade-off: size against fidelity</h2><p class=note>Grey: configurations the mixed-precision search "
        "evaluated that miss its budget; green: those that meet it; red ring: the one chosen; blue: the built "
        f"artifacts as validated. Hover a point for its figures. Metric: {escape(key)}, worst shape.</p>{svg}"
    )


def _judged_metric(mp: dict) -> str:
    budget = mp.get("budget") or {}
    for key in [*(budget.get("ceilings") or {}), *(budget.get("floors") or {})]:
        return key
    return "cosine_mean"


def _islands(report: dict) -> str:
    mp = report.get("mixed_precision") or {}
    islands = mp.get("islands") or []
    if not islands:
        return ""
    precisions = list(dict.fromkeys(i["precision"] for i in islands))
    colours = {p: PALETTE[k % len(PALETTE)] for k, p in enumerate(precisions)}
    bars = []
    for island in islands:
        if "gain" in island:
            value = max(island["gain"].values(), default=0.0)
        else:
            value = island.get("proxy_loss_at_8_bit") or 0.0
        bars.append(
            (
                island["name"],
                value,
                colours[island["precision"]],
                f"{island['name']}: {island['precision']} — {island['reason']}",
            )
        )
    label = "best proxy gain of a promotion" if any("gain" in i for i in islands) else "proxy loss at 8-bit activations"
    legend = " ".join(f"<span style='color:{c}'>■</span> {escape(p)}" for p, c in colours.items())
    rows = "".join(
        f"<tr><td>{escape(i['name'])}</td><td class=chosen>{escape(i['precision'])}</td>"
        f"<td>{escape(i['reason'])}</td></tr>"
        for i in islands
    )
    return (
        f"<h2>Islands: sensitivity and the precision chosen</h2><p class=note>{escape(label)} per island, coloured "
        f"by the precision chosen ({legend}); hover a bar for the reason.</p>{_hbars(bars)}"
        f"<table><tr><th>island</th><th>precision</th><th>reason</th></tr>{rows}</table>"
    )


def _shapes(report: dict) -> str:
    """The headline fidelity metric (a language model's KL, else cosine mean) per artifact, device and shape."""
    found = [v for v in report["validations"] if v["artifact"] != "fp32"]
    key = next(
        (
            k
            for k in ("kl_divergence_mean", "cosine_mean")
            for v in found
            for s in v.get("shapes", [])
            if isinstance(s["metrics"].get(k), (int, float))
        ),
        None,
    )
    groups = []
    for v in found:
        for shape in v.get("shapes", []):
            value = shape["metrics"].get(key)
            if isinstance(value, (int, float)):
                groups.append(
                    (
                        f"{v['artifact']} · {v['device']} · {shape['shape']}",
                        value,
                        PALETTE[len(groups) % len(PALETTE)],
                        f"{v['artifact']} on {v['device']} ({v['mode']}) at {shape['shape']}: "
                        f"{key.replace('_', ' ')} {value:.5f}",
                    )
                )
    if not groups:
        return ""
    if key == "kl_divergence_mean":
        return (
            "<h2>Fidelity per shape</h2><p class=note>KL divergence from FP32's next-token distribution, nats "
            "per token (lower is better), at each deployment shape.</p>" + _hbars(groups)
        )
    low = min(g[1] for g in groups)
    return (
        "<h2>Fidelity per shape</h2><p class=note>Cosine mean against FP32 at each deployment shape (the "
        f"validation entry's metrics are the worst of them).</p>{_hbars(groups, start=min(low - 0.002, 0.99))}"
    )


def _latency(report: dict) -> str:
    rows = []
    for v in report["validations"]:
        lat = v.get("latency_ms") or {}
        if "p50" in lat:
            rows.append(
                (
                    f"{v['artifact']} · {v['device']} ({v['mode']})",
                    lat.get("min", lat["p50"]),
                    lat["p50"],
                    lat.get("p90", lat["p50"]),
                    lat.get("p90", lat["p50"]),
                )
            )
    decoding = [p for p in report.get("profiles", []) if "decode_tokens_per_s" in p]
    for p in report.get("profiles", []):
        lat = p["latency_ms"]
        if p in decoding:  # one prompt pass: beside the validation's prompt passes, on the same axis
            ttft = p["ttft_ms"]
            rows.append(
                (
                    f"profile {p['model']} · {p['device']} ({p['mode']}): prompt of {p['prompt_tokens']} tokens "
                    "(time to first token)",
                    ttft["p50"],
                    ttft["p50"],
                    ttft["p90"],
                    ttft["p90"],
                )
            )
        else:
            rows.append(
                (f"profile {p['model']} · {p['device']} ({p['mode']})", lat["min"], lat["p50"], lat["p90"], lat["max"])
            )
    if not rows:
        return ""
    what = "one prompt pass (a whole text)" if decoding else "one batch"
    html = (
        "<h2>Latency per device</h2><p class=note>Time of " + what + ": each line spans min to max (validation: "
        "to p90), the box p50 to p90, the tick p50, in ms on a log scale. Emulated latencies are the stand-in's, "
        f"not the device's.</p>{_ranges(rows)}"
    )
    if decoding:
        steps = [
            (
                f"{p['model']} · {p['device']} ({p['mode']})",
                p["latency_ms"]["min"],
                p["latency_ms"]["p50"],
                p["latency_ms"]["p90"],
                p["latency_ms"]["max"],
            )
            for p in decoding
        ]
        speeds = "; ".join(
            f"{escape(p['device'])}: {p['decode_tokens_per_s']:.1f} tokens/s decoding, time to first "
            f"token {p['ttft_ms']['p50']:.0f} ms, peak RSS {_mb(p['peak_rss_mb'])}"
            for p in decoding
        )
        html += (
            "<h2>Decoding, one token at a time</h2><p class=note>Time of one decoded token with the KV cache "
            f"(batch 1), ms on a log scale. {speeds}.</p>{_ranges(steps)}"
        )
    return html


def _placement(report: dict) -> str:
    rows = []
    for v in report["validations"]:
        where = ", ".join(f"{escape(ep)} {n}" for ep, n in (v.get("placement") or {}).items())
        coverage = v.get("coverage")
        estimate = (
            (
                f"{coverage['ep']}: {coverage['supported_nodes']}/{coverage['nodes']} nodes, "
                f"{coverage['partitions']} partitions (estimate)"
            )
            if coverage
            else "—"
        )
        rows.append(
            f"<tr><td>{escape(v['artifact'])}</td><td>{escape(v['device'])}</td><td><span class=mode>"
            f"{escape(v['mode'])}</span></td><td>{where}</td><td class=num>{v.get('fallback_nodes', 0)}</td>"
            f"<td>{escape(estimate)}</td></tr>"
        )
    return (
        "<h2>Placement and fallbacks</h2><table><tr><th>artifact</th><th>device</th><th>mode</th><th>nodes per "
        f"execution provider</th><th>fallback nodes</th><th>coverage</th></tr>{''.join(rows)}</table>"
    )


def _environment(report: dict) -> str:
    seen, rows = set(), []
    for v in report["validations"]:
        env = v.get("environment") or {}
        key = (v["device"], v["mode"])
        if key in seen:
            continue
        seen.add(key)
        detail = ", ".join(f"{k} {escape(str(val))}" for k, val in env.items())
        rows.append(
            f"<tr><td>{escape(v['device'])}</td><td><span class=mode>{escape(v['mode'])}</span></td>"
            f"<td>{escape(v['provider'])}</td><td>{detail}</td><td>{escape(v.get('note', ''))}</td></tr>"
        )
    return (
        "<h2>Environment and mode</h2><table><tr><th>device</th><th>mode</th><th>provider</th><th>environment</th>"
        f"<th>note</th></tr>{''.join(rows)}</table>"
    )


# ------------------------------------------------------------------ plots
def _divergences(report: dict) -> str:
    """Per device whose fidelity fell below its simulation's: where (edgeq diverge), as a curve along the graph."""
    found = [v for v in report["validations"] if v.get("divergence")]
    parts = []
    for entry in found:
        d = entry["divergence"]
        first = d["first_departure"]
        said = (
            f"first departure: <code>{escape(first['name'])}</code> ({escape(first['op'])}, block "
            f"{escape(first['block'])}), its op alone {first['local_sqnr_db']} dB against the simulation"
            if first
            else "no op departs by itself beyond the threshold"
        )
        parts.append(
            f"<h3>{escape(entry['device'])} · {escape(entry['artifact'])} "
            f"<span class=mode>{escape(entry['mode'])}</span></h3><p>{_beside(entry['simulation'])}; {said}. {d['departures']} op(s) below "
            f"{d['threshold_db']:g} dB. Per quantized tensor, in graph order: each op alone (dots) and everything up "
            f"to it (line), device against simulation. Identical tensors are drawn at the top. Full table: "
            f"<code>{escape(d['file'])}</code>.</p>{_curve(d['curve'], d['threshold_db'])}"
        )
    return f"<section id=divergence><h2>Where the device departs</h2>{''.join(parts)}</section>" if parts else ""


def _beside(simulation: dict) -> str:
    losses = f"fidelity loss {simulation.get('device_loss', 0):.3g} against {simulation.get('simulation_loss', 0):.3g}"
    if simulation.get("departs"):
        return f"The device lost more than the CPU EP's simulation of the same model ({losses})"
    return f"The device kept within a tenth of the CPU EP's simulation of the same model ({losses})"


def _curve(curve: list, threshold: float, width: int = 720, height: int = 300) -> str:
    left, bottom, pad = 70, 40, 16
    finite = [v for pair in curve for v in pair if v is not None] or [threshold]
    top = max(finite) + 10  # where identical tensors (no noise at all) are drawn
    y0, y1 = min(min(finite), threshold) - 5, top + 5
    n = max(len(curve) - 1, 1)

    def at(i, v):
        y = top if v is None else v
        return left + i / n * (width - left - pad), height - bottom - (y - y0) / (y1 - y0) * (height - bottom - pad)

    parts = [_axes(width, height, left, bottom, pad, "quantized tensor, in graph order", "SQNR (dB)", (0, n), (y0, y1))]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (at(i, pair[1]) for i, pair in enumerate(curve)))
    parts.append(f"<polyline points='{line}' fill='none' stroke='#a0aec0' stroke-width='1.5'/>")
    tx, ty = at(0, threshold)
    parts.append(
        f"<line x1='{left}' y1='{ty:.1f}' x2='{width - pad}' y2='{ty:.1f}' stroke='#c53030' stroke-dasharray='4'/>"
    )
    for i, (local, _) in enumerate(curve):
        if local is not None:
            cx, cy = at(i, local)
            colour = "#c53030" if local < threshold else "#2b6cb0"
            parts.append(
                f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='2.5' fill='{colour}'><title>{local} dB</title></circle>"
            )
    return (
        f"<svg class=plot role=img width={width} height={height} viewBox='0 0 {width} {height}'>{''.join(parts)}</svg>"
    )


def _scatter(points, x_label: str, y_label: str, width: int = 720, height: int = 360) -> str:
    left, bottom, pad = 70, 40, 16
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = _span(xs)
    y0, y1 = _span(ys)

    def at(x, y):
        return (
            left + (x - x0) / (x1 - x0) * (width - left - pad),
            height - bottom - (y - y0) / (y1 - y0) * (height - bottom - pad),
        )

    parts = [_axes(width, height, left, bottom, pad, x_label, y_label, (x0, x1), (y0, y1), percent_x=True)]
    for x, y, title, colour, chosen in points:
        cx, cy = at(x, y)
        ring = (
            f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='9' fill='none' stroke='#c53030' stroke-width='2'/>"
            if chosen
            else ""
        )
        parts.append(
            f"<g>{ring}<circle cx='{cx:.1f}' cy='{cy:.1f}' r='5' fill='{colour}'><title>{escape(title)}"
            f"</title></circle></g>"
        )
    return (
        f"<svg class=plot role=img width={width} height={height} viewBox='0 0 {width} {height}'>{''.join(parts)}</svg>"
    )


def _hbars(bars, start: float | None = None, width: int = 720) -> str:
    row, left, pad = 18, 260, 60
    height = row * len(bars) + 30
    values = [b[1] for b in bars]
    low = min(0.0, *values) if start is None else start
    high = max(values) if max(values) > low else low + 1
    parts = []
    for k, (name, value, colour, title) in enumerate(bars):
        y = 10 + k * row
        length = max((value - low) / (high - low), 0.0) * (width - left - pad)
        parts.append(
            f"<text x='{left - 6}' y='{y + 12}' text-anchor='end'>{escape(_short(name, 40))}</text>"
            f"<rect x='{left}' y='{y + 2}' width='{length:.1f}' height='{row - 5}' fill='{colour}'>"
            f"<title>{escape(title)}</title></rect><text x='{left + length + 4:.1f}' y='{y + 12}'>"
            f"{value:.4g}</text>"
        )
    parts.append(
        f"<line x1='{left}' y1='6' x2='{left}' y2='{height - 18}' stroke='#718096'/>"
        f"<text x='{left}' y='{height - 4}'>{low:.4g}</text>"
    )
    return (
        f"<svg class=plot role=img width={width} height={height} viewBox='0 0 {width} {height}'>{''.join(parts)}</svg>"
    )


def _ranges(rows, width: int = 720) -> str:
    row, left, pad = 22, 330, 20
    height = row * len(rows) + 34
    values = [v for r in rows for v in r[1:] if v and v > 0]
    lo, hi = math.log10(min(values)) - 0.05, math.log10(max(values)) + 0.05

    def x(value):
        return left + (math.log10(max(value, 1e-6)) - lo) / (hi - lo) * (width - left - pad)

    parts = []
    for k, (name, low, p50, p90, high) in enumerate(rows):
        y = 12 + k * row
        title = f"{name}: min {low:.3g} ms, p50 {p50:.3g}, p90 {p90:.3g}, max {high:.3g}"
        parts.append(
            f"<g><title>{escape(title)}</title><text x='{left - 6}' y='{y + 4}' text-anchor='end'>"
            f"{escape(_short(name, 52))}</text><line x1='{x(low):.1f}' y1='{y}' x2='{x(high):.1f}' y2='{y}' "
            f"stroke='#718096'/><rect x='{x(p50):.1f}' y='{y - 6}' width='{max(x(p90) - x(p50), 1):.1f}' "
            f"height='12' fill='#90cdf4' stroke='#2b6cb0'/><line x1='{x(p50):.1f}' y1='{y - 7}' "
            f"x2='{x(p50):.1f}' y2='{y + 7}' stroke='#1a365d' stroke-width='2'/></g>"
        )
    ticks = [10**e for e in range(math.floor(lo), math.ceil(hi) + 1) if lo <= e <= hi]
    for t in ticks:
        parts.append(
            f"<line x1='{x(t):.1f}' y1='4' x2='{x(t):.1f}' y2='{height - 22}' stroke='#e2e8f0'/>"
            f"<text x='{x(t):.1f}' y='{height - 8}' text-anchor='middle'>{t:g} ms</text>"
        )
    return (
        f"<svg class=plot role=img width={width} height={height} viewBox='0 0 {width} {height}'>{''.join(parts)}</svg>"
    )


def axis_lines(width, height, left, bottom, pad, x_label, y_label) -> list[str]:
    """A plot's two axes and their labels (its ticks are the caller's)."""
    return [
        f"<line x1='{left}' y1='{height - bottom}' x2='{width - pad}' y2='{height - bottom}' stroke='#718096'/>",
        f"<line x1='{left}' y1='{pad}' x2='{left}' y2='{height - bottom}' stroke='#718096'/>",
        f"<text x='{(left + width) / 2:.0f}' y='{height - 6}' text-anchor='middle'>{escape(x_label)}</text>",
        f"<text x='14' y='{(height - bottom) / 2:.0f}' transform='rotate(-90 14 {(height - bottom) / 2:.0f})' "
        f"text-anchor='middle'>{escape(y_label)}</text>",
    ]


def _axes(width, height, left, bottom, pad, x_label, y_label, xs, ys, percent_x=False) -> str:
    parts = axis_lines(width, height, left, bottom, pad, x_label, y_label)
    decimals = max(2, 2 - math.floor(math.log10(max(ys[1] - ys[0], 1e-12))))  # enough digits to tell ticks apart
    for k in range(5):
        xv = xs[0] + (xs[1] - xs[0]) * k / 4
        yv = ys[0] + (ys[1] - ys[0]) * k / 4
        px = left + (width - left - pad) * k / 4
        py = height - bottom - (height - bottom - pad) * k / 4
        parts.append(
            f"<text x='{px:.0f}' y='{height - bottom + 14}' text-anchor='middle'>"
            f"{f'{xv:.1%}' if percent_x else f'{xv:.3g}'}</text>"
            f"<text x='{left - 4}' y='{py + 4:.0f}' text-anchor='end'>{yv:.{decimals}f}</text>"
        )
    return "".join(parts)


def _span(values) -> tuple[float, float]:
    low, high = min(values), max(values)
    margin = (high - low) * 0.08 or abs(high) * 0.01 or 0.01
    return low - margin, high + margin


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def _mb(value: float | None) -> str:
    return f"{value:.0f} MB" if value is not None else "not measured"
