"""The SVG plots of report.html: the accuracy-vs-latency Pareto view (with a zoom where points overlap)
and the size waterfall. Drawn here, in Python: the page loads nothing."""
from __future__ import annotations

from pipeline.report.htmlkit import (FONT_PX, NOT_MEASURED, SHARED_COLOR, SHARED_STAGES, _bytes, _deliverables, _e,
                                     _int8_of, _nice_ticks, _pct_change, _place_label, _Point, _shared, _text_w,
                                     _tick_label)
from pipeline.report.render import MetricView


# ---------------------------------------------------------------- plots
OVERLAP_PX = 16      # two points closer than this in the full view get a zoomed view of their region
W, H, ML, MR, MT, MB = 1000, 440, 64, 24, 20, 52


def pareto(pts: list[_Point], higher: bool) -> list[_Point]:
    """The points no other point beats on both latency (lower) and the metric (in its direction), by latency."""
    def better(a: _Point, b: _Point) -> bool:   # a dominates b
        ge = a.y >= b.y if higher else a.y <= b.y
        gt = a.y > b.y if higher else a.y < b.y
        return a.x <= b.x and ge and (a.x < b.x or gt)
    return sorted((p for p in pts if not any(better(q, p) for q in pts)), key=lambda p: p.x)


def budget_lines(report: dict, colors: dict[str | None, str]) -> list[tuple[float, str, str]]:
    """(metric value, label, colour) of each target's accuracy budget: the teacher's figure minus the
    allowed drop, in the metric's direction."""
    mv, teacher = MetricView(report), report.get("teacher_accuracy")
    if teacher is None:
        return []
    by_value: dict[float, list[str]] = {}   # targets with the same budget share one line
    for t in report.get("targets", []):
        drop = t.get("budgets", {}).get("max_accuracy_drop")
        if drop is not None:
            v = round((teacher - drop if mv.higher else teacher + drop) * mv.scale, 9)
            by_value.setdefault(v, []).append(t["name"])
    return [(v, f"{', '.join(names)} accuracy budget", colors.get(names[0], SHARED_COLOR) if len(names) == 1
             else SHARED_COLOR) for v, names in by_value.items()]


def _overlapping(pts: list[_Point], sx, sy) -> list[_Point]:
    return [p for p in pts if any(q is not p and abs(sx(p.x) - sx(q.x)) < OVERLAP_PX
                                  and abs(sy(p.y) - sy(q.y)) < OVERLAP_PX for q in pts)]


def _svg(svg_id: str, title: str, pts: list[_Point], xr: tuple[float, float], yr: tuple[float, float],
         frontier: list[_Point], lines: list[tuple[float, str, str]], mv: MetricView) -> tuple[str, object, object]:
    """One scatter panel over the ranges xr (ms) and yr (metric, display units)."""
    xt, yt = _nice_ticks(*xr), _nice_ticks(*yr)
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def sx(v: float) -> float:
        return ML + (v - x0) / (x1 - x0) * (W - ML - MR)

    def sy(v: float) -> float:
        return H - MB - (v - y0) / (y1 - y0) * (H - MT - MB)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="{svg_id}" viewBox="0 0 {W} {H}" role="img" '
           f'aria-labelledby="{svg_id}-title" font-family="system-ui, DejaVu Sans, Arial, sans-serif" '
           f'font-size="{FONT_PX}">', f'<title id="{svg_id}-title">{_e(title)}</title>',
           f'<rect x="{ML}" y="{MT}" width="{W - ML - MR}" height="{H - MT - MB}" fill="#fbfcfd" stroke="#d9dee5"/>']
    for v in xt:
        out.append(f'<line x1="{sx(v):.1f}" y1="{MT}" x2="{sx(v):.1f}" y2="{H - MB}" stroke="#e8ebef"/>'
                   f'<text x="{sx(v):.1f}" y="{H - MB + 16}" text-anchor="middle" fill="#5b6472">'
                   f"{_tick_label(v, xt)}</text>")
    for v in yt:
        out.append(f'<line x1="{ML}" y1="{sy(v):.1f}" x2="{W - MR}" y2="{sy(v):.1f}" stroke="#e8ebef"/>'
                   f'<text x="{ML - 6}" y="{sy(v) + 4:.1f}" text-anchor="end" fill="#5b6472">{_tick_label(v, yt)}</text>')
    for v, label, color in lines:
        if y0 <= v <= y1:
            out.append(f'<g class="budget"><line x1="{ML}" y1="{sy(v):.1f}" x2="{W - MR}" y2="{sy(v):.1f}" '
                       f'stroke="{color}" stroke-dasharray="6 4"/><text x="{ML + 6}" y="{sy(v) - 4:.1f}" '
                       f'text-anchor="start" fill="{color}">{_e(label)} ({v:{mv.fmt}}{mv.suffix})</text></g>')
    if len(frontier) > 1:   # the frontier as a staircase: nothing better lies below-left of it
        d = [f"M{sx(frontier[0].x):.1f},{sy(frontier[0].y):.1f}"]
        for a, b in zip(frontier, frontier[1:]):
            d.append(f"H{sx(b.x):.1f}V{sy(b.y):.1f}")
        out.append(f'<clipPath id="{svg_id}-clip"><rect x="{ML}" y="{MT}" width="{W - ML - MR}" '
                   f'height="{H - MT - MB}"/></clipPath><path class="frontier" d="{"".join(d)}" fill="none" '
                   f'stroke="#1d2430" stroke-opacity="0.45" stroke-width="1.5" clip-path="url(#{svg_id}-clip)"/>')
    out.append(f'<text x="{(ML + W - MR) / 2}" y="{H - 12}" text-anchor="middle" fill="#1d2430">'
               f"host p50 latency (ms, batch 1) - lower is better</text>"
               f'<text transform="translate(16 {(MT + H - MB) / 2}) rotate(-90)" text-anchor="middle" '
               f'fill="#1d2430">test {_e(mv.name)}{" (%)" if mv.fraction else ""} - {mv.direction}</text>')
    inside = [p for p in pts if x0 <= p.x <= x1 and y0 <= p.y <= y1]
    # Labels go beside their point, as close as they fit without covering another label or point;
    # one pushed further away gets a leader line.
    placed = [(sx(p.x) - 7, sy(p.y) - 7, sx(p.x) + 7, sy(p.y) + 7) for p in inside]
    on_front = {id(p) for p in frontier}
    for p in sorted(inside, key=lambda q: (q.x, -q.y)):
        cx, cy = sx(p.x), sy(p.y)
        r = 6 if p.deliverable else 4.5
        ring = f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r + 3}" fill="none" stroke="{p.color}"/>' if p.deliverable else ""
        front = " (Pareto frontier)" if id(p) in on_front else ""
        out.append(f'<g class="point{" pareto" if front else ""}">{ring}<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r}" '
                   f'fill="{p.color}" fill-opacity="0.85"><title>{_e(p.label)}: {p.y:{mv.fmt}}{mv.suffix} at '
                   f"{p.x:.3f} ms{front}</title></circle></g>")
        tx, ty, anchor, box = _place_label(cx, cy, _text_w(p.label), placed, (ML + 2, MT + 2, W - MR - 2, H - MB - 2))
        placed.append(box)
        if abs(ty - 4 - cy) > 10:
            out.append(f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{tx:.1f}" y2="{ty - 4:.1f}" stroke="{p.color}" '
                       f'stroke-opacity="0.6"/>')
        out.append(f'<text class="label" x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" fill="{p.color}">'
                   f"{_e(p.label)}</text>")
    out.append("</svg>")
    return "".join(out), sx, sy


def _yrange(ys: list[float], mv: MetricView, lines: list[float] = ()) -> tuple[float, float]:
    lo, hi = min([*ys, *lines]), max([*ys, *lines])
    pad = max(0.25 if mv.fraction else 1e-6, (hi - lo) * 0.12)
    return (max(0.0, lo - pad), min(100.0, hi + pad)) if mv.fraction else (lo - pad, hi + pad)


def _scatter(report: dict, colors: dict[str | None, str]) -> str:
    """Accuracy vs host latency of every artifact measured natively here: Pareto frontier, each target's
    accuracy budget, and a zoom on the region where points overlap. Host proxies (their time is a numerics
    check, not a latency) and device figures (another axis) are listed under the plot, not drawn."""
    from pipeline.report.render import host_proxy
    arts = [a for a in report["artifacts"] if a.get("accuracy") is not None and a.get("latency_p50_ms") is not None
            and a.get("latency_where") != "device" and not host_proxy(report, a)]
    left_out = [a for a in report["artifacts"] if a not in arts]
    note = ""
    if left_out:
        def why(a: dict) -> str:
            if host_proxy(report, a):
                return ("host proxy: its time here is a numerics check in " + a["backend"]
                        + ", not a latency of what the device runs; accuracy "
                        + ("n/a" if a.get("accuracy") is None else
                           f"{MetricView(report).v(a['accuracy']):{MetricView(report).fmt}}{MetricView(report).suffix}"))
            if a.get("latency_where") == "device" and a.get("latency_p50_ms") is not None:
                return f"device p50 {a['latency_p50_ms']:.3f} ms, not on this host's axis; {a.get('note') or ''}"
            return a.get("note") or NOT_MEASURED
        items = "".join(f"<li><b>{_e(a['name'])}</b>: {_e(why(a))}</li>" for a in left_out)
        note = (f'<div class="note">Not plotted (nothing is drawn as a latency that is not one, or that this host did '
                f"not measure):<ul>{items}</ul></div>")
    if not arts:
        return f'<p class="muted">No artifact has both accuracy and host latency.</p>{note}'
    mv = MetricView(report)
    pts = [_Point(a["latency_p50_ms"], a["accuracy"] * mv.scale, a["name"], colors.get(a.get("target"), SHARED_COLOR),
                  a["name"] in _deliverables(report)) for a in arts]
    frontier = pareto(pts, mv.higher)
    lines = budget_lines(report, colors)
    xr = (0.0, max(p.x for p in pts) * 1.08)
    svg, sx, sy = _svg("plot-scatter", "Accuracy vs host p50 latency per artifact (Pareto view)", pts, xr,
                       _yrange([p.y for p in pts], mv, [v for v, _, _ in lines]), frontier, lines, mv)
    parts = [svg]
    crowd = _overlapping(pts, sx, sy)
    if crowd:
        xs, ys = [p.x for p in crowd], [p.y for p in crowd]
        span = max(xs) - min(xs)
        zx = (max(0.0, min(xs) - max(span * 0.25, max(xs) * 0.02)), max(xs) + max(span * 0.25, max(xs) * 0.02))
        zoom, _, _ = _svg("plot-zoom", "Zoom on the points that overlap in the full view", pts, zx,
                          _yrange(ys, mv), frontier, lines, mv)
        parts.append(f'<p class="note">Zoom: {len(crowd)} points overlap above; the region holding them, '
                     f"enlarged:</p>{zoom}")
    legend = " ".join(f'<span style="color:{c}">&#9679;</span> {_e(n if n else "shared (all targets)")}'
                      for n, c in colors.items() if n is None or any(a.get("target") == n for a in arts))
    cap = (f"<figcaption>{legend}. Ringed: a target's deliverable (&#10003; in the tables). Grey staircase: the Pareto "
           f"frontier (no artifact is both faster and more accurate than a point on it). Dashed: each target's "
           f"accuracy budget. Latency measured on this host ({_e(report.get('host', {}).get('cpu', 'unknown CPU'))}), "
           f"batch 1; latency budgets are device budgets, held only against device figures (see the target cards)."
           f"</figcaption>")
    return f"<figure>{''.join(parts)}{cap}</figure>{note}"


def _waterfall(report: dict, colors: dict[str | None, str]) -> str:
    """Rows teacher -> pruned -> distilled -> <target> INT8, each drawn against the row it came from."""
    rows: list[tuple[str, dict, dict | None, str]] = []  # (label, artifact, came from, colour)
    prev: dict | None = None
    for stage, label in SHARED_STAGES:
        a = _shared(report, stage)
        if a is not None and a.get("size_bytes") is not None:
            rows.append((label, a, prev, SHARED_COLOR))
            prev = a
    for t in report.get("targets", []):
        a = _int8_of(report, t["name"])
        if a is not None:
            rows.append((f"{t['name']} INT8", a, prev, colors.get(t["name"], SHARED_COLOR)))
    if not rows:
        return '<p class="muted">No artifact sizes in this report.</p>'
    W, ml, mr, row_h, top = 1000, 150, 250, 38, 12
    H = top + row_h * len(rows) + 30
    xmax = max(r[1]["size_bytes"] for r in rows) * 1.02
    xt = _nice_ticks(0.0, xmax / 1e6, 6)

    def sx(b: float) -> float:
        return ml + b / 1e6 / xt[-1] * (W - ml - mr)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="plot-waterfall" viewBox="0 0 {W} {H}" role="img" '
           f'aria-labelledby="waterfall-title" font-family="system-ui, DejaVu Sans, Arial, sans-serif" '
           f'font-size="{FONT_PX}">',
           '<title id="waterfall-title">Artifact size at each step: teacher, pruned, distilled, INT8 per target</title>',
           '<defs><pattern id="removed" width="6" height="6" patternUnits="userSpaceOnUse" '
           'patternTransform="rotate(45)"><rect width="6" height="6" fill="#eef1f5"/>'
           '<line x1="0" y1="0" x2="0" y2="6" stroke="#b8c0cc" stroke-width="2"/></pattern></defs>']
    base_y = top + row_h * len(rows)
    for v in xt:
        out.append(f'<line x1="{sx(v * 1e6):.1f}" y1="{top}" x2="{sx(v * 1e6):.1f}" y2="{base_y}" stroke="#e8ebef"/>'
                   f'<text x="{sx(v * 1e6):.1f}" y="{base_y + 16}" text-anchor="middle" fill="#5b6472">'
                   f"{_tick_label(v, xt)}</text>")
    out.append(f'<text x="{ml + (W - ml - mr) / 2}" y="{H - 2}" text-anchor="middle" fill="#1d2430">size (MB)</text>')
    y_of = {}
    for i, (label, a, src, color) in enumerate(rows):
        y = top + i * row_h + 7
        y_of[id(a)] = y
        size = a["size_bytes"]
        out.append(f'<g class="step"><text x="{ml - 8}" y="{y + 16}" text-anchor="end" fill="#1d2430">{_e(label)}</text>'
                   f'<rect x="{ml}" y="{y}" width="{sx(size) - ml:.1f}" height="22" fill="{color}" fill-opacity="0.85">'
                   f"<title>{_e(a['name'])}: {_bytes(size)}</title></rect>")
        text = _bytes(size)
        if src is not None:
            before = src["size_bytes"]
            lo, hi = sorted((size, before))
            fill = 'url(#removed)' if size <= before else "#f3c2c2"
            out.append(f'<rect x="{sx(lo):.1f}" y="{y}" width="{sx(hi) - sx(lo):.1f}" height="22" fill="{fill}" '
                       f'stroke="#b8c0cc" stroke-dasharray="3 2"/>'
                       f'<line x1="{sx(before):.1f}" y1="{y_of[id(src)] + 22}" x2="{sx(before):.1f}" y2="{y}" '
                       f'stroke="#8a94a3" stroke-dasharray="2 2"/>')
            src_label = next(r[0] for r in rows if r[1] is src)
            text += f" ({_pct_change(size, before):+.1f}% vs {src_label})"
        out.append(f'<text x="{max(sx(size), sx(src["size_bytes"]) if src else 0) + 8:.1f}" y="{y + 16}" '
                   f'fill="#1d2430">{_e(text)}</text></g>')
    out.append("</svg>")
    cap = ("<figcaption>Solid bar: the artifact's file size. Hatched: what the step removed (red: what it added). "
           "Each target's INT8 artifact is drawn against the distilled model it was quantized from.</figcaption>")
    return f"<figure>{''.join(out)}{cap}</figure>"
