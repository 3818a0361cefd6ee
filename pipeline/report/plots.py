"""The SVG plots of report.html: the accuracy-vs-latency Pareto view (with a zoom where points overlap)
and the size waterfall. Drawn here, in Python: the page loads nothing."""
from __future__ import annotations

from pipeline.report.htmlkit import FONT_PX, NOT_MEASURED, SHARED_COLOR, SHARED_STAGES, _bytes, _deliverables, _e, _int8_of, _nice_ticks, _pct_change, _place_label, \
    _Point, _shared, _text_w, _tick_label
from pipeline.report.render import MetricView


# ---------------------------------------------------------------- plots
def _scatter(report: dict, colors: dict[str | None, str]) -> str:
    arts = [a for a in report["artifacts"] if a.get("accuracy") is not None and a.get("latency_p50_ms") is not None
            and a.get("latency_where") != "device"]
    left_out = [a for a in report["artifacts"] if a not in arts]
    note = ""
    if left_out:
        items = "".join(f"<li><b>{_e(a['name'])}</b>: "
                        + (f"device p50 {a['latency_p50_ms']:.3f} ms, not on this host's axis; "
                           if a.get("latency_where") == "device" and a.get("latency_p50_ms") is not None else "")
                        + f"{_e(a.get('note') or NOT_MEASURED)}</li>" for a in left_out)
        note = (f'<div class="note">Not plotted (no host accuracy and latency; nothing is shown as a number '
                f"this host did not measure):<ul>{items}</ul></div>")
    if not arts:
        return f'<p class="muted">No artifact has both accuracy and host latency.</p>{note}'
    mv = MetricView(report)
    pts = [_Point(a["latency_p50_ms"], a["accuracy"] * mv.scale, a["name"], colors.get(a.get("target"), SHARED_COLOR),
                  a["name"] in _deliverables(report)) for a in arts]
    W, H, ml, mr, mt, mb = 1000, 440, 64, 24, 20, 52
    xt = _nice_ticks(0.0, max(p.x for p in pts) * 1.08)
    ylo, yhi = min(p.y for p in pts), max(p.y for p in pts)
    pad = max(0.25 if mv.fraction else 1e-6, (yhi - ylo) * 0.12)
    yt = (_nice_ticks(max(0.0, ylo - pad), min(100.0, yhi + pad)) if mv.fraction  # accuracy lives in 0..100 %
          else _nice_ticks(ylo - pad, yhi + pad))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def sx(v: float) -> float:
        return ml + (v - x0) / (x1 - x0) * (W - ml - mr)

    def sy(v: float) -> float:
        return H - mb - (v - y0) / (y1 - y0) * (H - mt - mb)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="plot-scatter" viewBox="0 0 {W} {H}" role="img" '
           f'aria-labelledby="scatter-title" font-family="system-ui, DejaVu Sans, Arial, sans-serif" '
           f'font-size="{FONT_PX}">',
           '<title id="scatter-title">Accuracy vs host p50 latency per artifact</title>',
           f'<rect x="{ml}" y="{mt}" width="{W - ml - mr}" height="{H - mt - mb}" fill="#fbfcfd" stroke="#d9dee5"/>']
    for v in xt:
        out.append(f'<line x1="{sx(v):.1f}" y1="{mt}" x2="{sx(v):.1f}" y2="{H - mb}" stroke="#e8ebef"/>'
                   f'<text x="{sx(v):.1f}" y="{H - mb + 16}" text-anchor="middle" fill="#5b6472">'
                   f"{_tick_label(v, xt)}</text>")
    for v in yt:
        out.append(f'<line x1="{ml}" y1="{sy(v):.1f}" x2="{W - mr}" y2="{sy(v):.1f}" stroke="#e8ebef"/>'
                   f'<text x="{ml - 6}" y="{sy(v) + 4:.1f}" text-anchor="end" fill="#5b6472">{_tick_label(v, yt)}</text>')
    out.append(f'<text x="{(ml + W - mr) / 2}" y="{H - 12}" text-anchor="middle" fill="#1d2430">'
               f"host p50 latency (ms, batch 1) - lower is better</text>"
               f'<text transform="translate(16 {(mt + H - mb) / 2}) rotate(-90)" text-anchor="middle" '
               f'fill="#1d2430">test {_e(mv.name)}{" (%)" if mv.fraction else ""} - {mv.direction}</text>')
    # Labels go beside their point, as close as they fit without covering another label or point;
    # one pushed further away gets a leader line.
    placed = [(sx(p.x) - 7, sy(p.y) - 7, sx(p.x) + 7, sy(p.y) + 7) for p in pts]
    for p in sorted(pts, key=lambda q: (q.x, -q.y)):
        cx, cy = sx(p.x), sy(p.y)
        r = 6 if p.deliverable else 4.5
        ring = f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r + 3}" fill="none" stroke="{p.color}"/>' if p.deliverable else ""
        out.append(f'<g class="point">{ring}<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r}" fill="{p.color}" '
                   f'fill-opacity="0.85"><title>{_e(p.label)}: {p.y:.2f}% at {p.x:.3f} ms</title></circle></g>')
        tx, ty, anchor, box = _place_label(cx, cy, _text_w(p.label), placed, (ml + 2, mt + 2, W - mr - 2, H - mb - 2))
        placed.append(box)
        if abs(ty - 4 - cy) > 10:
            out.append(f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{tx:.1f}" y2="{ty - 4:.1f}" stroke="{p.color}" '
                       f'stroke-opacity="0.6"/>')
        out.append(f'<text class="label" x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" fill="{p.color}">'
                   f"{_e(p.label)}</text>")
    out.append("</svg>")
    legend = " ".join(f'<span style="color:{c}">&#9679;</span> {_e(n if n else "shared (all targets)")}'
                      for n, c in colors.items() if n is None or any(a.get("target") == n for a in arts))
    cap = (f"<figcaption>{legend}. Ringed: a target's deliverable (&#10003; in the tables). Latency measured on this host "
           f"({_e(report.get('host', {}).get('cpu', 'unknown CPU'))}), batch 1; device latency is not shown "
           f"here.</figcaption>")
    return f"<figure>{''.join(out)}{cap}</figure>{note}"


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
