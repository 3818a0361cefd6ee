"""Render a report dict (pipeline/report/schema.py) as one self-contained `report.html`.

Nothing is fetched when the page opens: the CSS is inline and the plots are SVG drawn here, in Python.
The page holds, in this order:

- one card per target: deliverable, engine status and each budget (met / missed / not measured here);
- accuracy vs host p50 latency, one labelled point for every artifact that has both figures; the
  artifacts without them (e.g. a TensorRT engine "to be built on device") are named under the plot;
- a size waterfall: teacher -> pruned -> distilled -> each target's INT8 artifact, every step drawn
  against the step it came from;
- per target, the stage attribution table teacher -> pruned -> distilled -> INT8 -> engine: what each
  step did to accuracy, latency, size, parameters and MACs;
- every artifact, the stages (ran / cached, wall time) and the toolchain.

The output is well-formed XML (XHTML syntax in an HTML5 document), so tools can parse it as such.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Any, Iterable, Sequence

from pipeline.report import device_table
from pipeline.report.render import MetricView

NOT_MEASURED = "not measured here"
SHARED_STAGES = (("load", "teacher"), ("prune", "pruned"), ("distill", "distilled"))
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
SHARED_COLOR = "#555f6d"
FONT_PX = 12
CHAR_W = 6.6  # average glyph width at FONT_PX in the sans-serif stack below, for label boxes
# Where a scatter label may go, nearest first: (step away from the point, vertical offset in px).
_LABEL_SLOTS = [(k, dy) for k in range(6) for dy in (0, -15 * (k + 1), 15 * (k + 1))]

CSS = """
:root { --ink:#1d2430; --muted:#5b6472; --line:#d9dee5; --bg:#f6f7f9; --ok:#1a7f37; --bad:#c62828; --na:#6b7280; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; }
main { max-width:1120px; margin:0 auto; padding:24px 20px 48px; }
h1 { font-size:24px; margin:0 0 4px; }
h2 { font-size:18px; margin:32px 0 8px; padding-bottom:4px; border-bottom:1px solid var(--line); }
h3 { font-size:15px; margin:18px 0 6px; }
p.sub, .muted, figcaption { color:var(--muted); }
section { margin-top:8px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; }
.card { flex:1 1 320px; background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
.card h3 { margin-top:0; }
.card ul { margin:6px 0 0; padding-left:18px; }
.badge { display:inline-block; padding:0 7px; border-radius:9px; font-size:12px; font-weight:600; color:#fff; }
.badge.met { background:var(--ok); } .badge.missed { background:var(--bad); } .badge.na { background:var(--na); }
figure { margin:8px 0 0; background:#fff; border:1px solid var(--line); border-radius:8px; padding:10px; }
figure svg { display:block; width:100%; height:auto; }
figcaption { font-size:13px; margin-top:6px; }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; width:100%; background:#fff; font-size:13px; margin-top:6px; }
th, td { border:1px solid var(--line); padding:4px 7px; text-align:left; vertical-align:top; }
th { background:#eef1f5; font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td.na { color:var(--na); font-style:italic; white-space:normal; }
td:first-child { min-width:180px; }
.up { color:var(--bad); } .down { color:var(--ok); }
.note { font-size:13px; color:var(--muted); margin:6px 0 0; }
footer { margin-top:36px; font-size:12px; color:var(--muted); }
"""


# ---------------------------------------------------------------- formatting
def _e(v: Any) -> str:
    return escape(str(v), quote=True)


def _unit(v: float | None, fmt: str, unit: str, na: str = NOT_MEASURED) -> str:
    """`v` formatted with its unit, or `na`; escaped."""
    return _e(na if v is None else f"{format(v, fmt)} {unit}")


def _bytes(n: float | None, na: str = "n/a") -> str:
    if n is None:
        return na
    if n >= 1e6:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e3:.1f} KB"


def _pct_change(new: float | None, old: float | None) -> float | None:
    return None if new is None or old in (None, 0) else (new / old - 1) * 100


def _cell(text: str, cls: str = "") -> str:
    return f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>"


def _numcell(v: float | int | None, fmt: str, na: str = NOT_MEASURED, suffix: str = "") -> str:
    if v is None:
        return _cell(_e(na), "num na")
    return _cell(_e(format(v, fmt)) + suffix, "num")


def _change(pct: float | None) -> str:
    """A signed percentage of a lower-is-better figure: green when it fell, red when it rose."""
    if pct is None:
        return ""
    cls = "down" if pct < 0 else ("up" if pct >= 0.05 else "")
    return f' <span class="{cls}">({pct:+.1f}%)</span>' if cls else f" ({pct:+.1f}%)"


def _table(head: Sequence[tuple[str, bool]], rows: Iterable[str]) -> str:
    ths = "".join(f'<th class="num">{_e(h)}</th>' if num else f"<th>{_e(h)}</th>" for h, num in head)
    return f'<div class="scroll"><table><thead><tr>{ths}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5, 5 x 10^k steps)."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0) * 0.1
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v < hi + step * 0.999:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _tick_label(v: float, ticks: Sequence[float]) -> str:
    """`v` with as many decimals as the tick step needs (0.25 -> 2, 5 -> 0)."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = next((d for d in range(5) if abs(round(step, d) - step) < 1e-9 * max(1.0, step)), 4)
    return f"{v:.{decimals}f}"


def _text_w(s: str) -> float:
    return len(s) * CHAR_W


# ---------------------------------------------------------------- artifacts
def _color_of(report: dict) -> dict[str | None, str]:
    names = [t["name"] for t in report.get("targets", [])]
    names += sorted({a["target"] for a in report["artifacts"] if a.get("target") and a["target"] not in names})
    colors: dict[str | None, str] = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
    colors[None] = SHARED_COLOR
    return colors


def _deliverables(report: dict) -> set[str]:
    """Names of the artifacts the targets ship (their `deliverable`)."""
    return {t["deliverable"] for t in report.get("targets", []) if t.get("deliverable")}


def _shared(report: dict, stage: str) -> dict | None:
    return next((a for a in report["artifacts"] if a["stage"] == stage and not a.get("target")), None)


def _int8_of(report: dict, target: str) -> dict | None:
    """The target's first INT8 artifact with a file (the quantized model, before any engine build)."""
    return next((a for a in report["artifacts"] if a.get("target") == target
                 and str(a.get("precision", "")).startswith("int8") and a.get("size_bytes") is not None), None)


def _engine_of(report: dict, t: dict, int8: dict | None) -> dict | None:
    """What the target's engine runs, when it is another artifact than the INT8 one: an artifact of the
    target's backend that is INT8 or the one precision selection chose (e.g. FP32 under "auto")."""
    return next((a for a in report["artifacts"] if a.get("target") == t["name"] and a is not int8
                 and a["backend"] == t["backend"]
                 and (str(a.get("precision", "")).startswith("int8") or a.get("selected") is True)), None)


@dataclass(frozen=True)
class _Point:
    x: float
    y: float
    label: str
    color: str
    deliverable: bool


Box = tuple[float, float, float, float]


def _place_label(cx: float, cy: float, w: float, placed: list[Box], bounds: Box) -> tuple[float, float, str, Box]:
    """Where the label of the point (cx, cy) goes: the nearest slot, right then left, inside `bounds`
    and overlapping no box in `placed`; the last slot tried when none is free."""
    for k, dy in _LABEL_SLOTS:
        for side in (1, -1):
            tx, ty = cx + side * (10 + 6 * k), cy + 4 + dy
            bx = tx if side > 0 else tx - w
            box = (bx, ty - FONT_PX + 1, bx + w, ty + 3)
            inside = box[0] >= bounds[0] and box[1] >= bounds[1] and box[2] <= bounds[2] and box[3] <= bounds[3]
            if inside and not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                return tx, ty, "start" if side > 0 else "end", box
    return tx, ty, "end", box


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


# ---------------------------------------------------------------- tables
def _latency_cell(a: dict, prev: dict | None) -> str:
    """p50 with its change vs the row above when both are host figures; device figures are marked."""
    lat = a.get("latency_p50_ms")
    if lat is None:
        return _numcell(None, ".3f")
    if a.get("latency_where") == "device":
        return _cell(f"{lat:.3f} (device)", "num")
    before = prev.get("latency_p50_ms") if prev and prev.get("latency_where") != "device" else None
    return _cell(f"{lat:.3f}{_change(_pct_change(lat, before))}", "num")


def _attribution(report: dict, t: dict) -> str:
    mv = MetricView(report)
    int8 = _int8_of(report, t["name"])
    engine = _engine_of(report, t, int8)
    steps: list[tuple[str, dict]] = [(label, a) for stage, label in SHARED_STAGES
                                     if (a := _shared(report, stage)) is not None]
    if int8 is not None:
        steps.append(("INT8" if engine is not None or int8["backend"] != t["backend"] else "INT8 (the engine runs it)",
                      int8))
    if engine is not None:
        steps.append(("engine", engine))
    rows, prev = [], None
    for label, a in steps:
        acc = a.get("accuracy")
        d_prev = None if acc is None or prev is None or prev.get("accuracy") is None else (acc - prev["accuracy"]) * mv.scale
        d_teacher = mv.v(a.get("accuracy_delta"))
        size, macs = a.get("size_bytes"), a.get("macs")
        rows.append(
            "<tr>" + _cell(f"<b>{_e(label)}</b><br/><span class=\"muted\">{_e(a['name'])}"
                           f"{' &#10003;' if a['name'] in _deliverables(report) else ''}</span>")
            + _numcell(mv.v(acc), mv.fmt, suffix=mv.suffix)
            + _numcell(d_prev, mv.delta_fmt, na="n/a" if acc is not None else NOT_MEASURED, suffix=mv.delta_suffix)
            + _numcell(d_teacher, mv.delta_fmt, na="n/a" if acc is not None else NOT_MEASURED, suffix=mv.delta_suffix)
            + _latency_cell(a, prev)
            + (_cell(_e(_bytes(size, "built on device")), "num na") if size is None else
               _cell(f"{_e(_bytes(size))}{_change(_pct_change(size, prev.get('size_bytes') if prev else None))}", "num"))
            + _numcell(a.get("params"), ",d", na="n/a")
            + _numcell(None if macs is None else macs / 1e6, ".2f", na="n/a")
            + "</tr>")
        prev = a
    head = [("step", False), (mv.name, True), ("Δ vs previous", True), ("Δ vs teacher", True),
            ("p50 ms, host unless marked (Δ vs previous)", True), ("size (Δ vs previous)", True), ("params", True), ("MMACs", True)]
    return (f"<h3>{_e(t['name'])} ({_e(t.get('device', ''))}, {_e(t['backend'])}, {_e(t.get('precision', ''))})</h3>"
            + _table(head, rows))


def _artifacts_table(report: dict) -> str:
    mv = MetricView(report)
    rows = []
    for a in report["artifacts"]:
        ci, where = a.get("latency_ci95_ms"), a.get("latency_where")
        note = f'<br/><span class="muted">{_e(a["note"])}</span>' if a.get("note") else ""
        rows.append(
            "<tr>" + _cell(f"<b>{_e(a['name'])}</b>{' &#10003;' if a['name'] in _deliverables(report) else ''}{note}")
            + _cell(_e(a.get("target") or "all")) + _cell(f"{_e(a['backend'])}<br/>{_e(a.get('precision', ''))}")
            + _numcell(mv.v(a["accuracy"]), mv.fmt, suffix=mv.suffix)
            + _numcell(mv.v(a.get("accuracy_delta")), mv.delta_fmt,
                       na="n/a" if a["accuracy"] is not None else NOT_MEASURED, suffix=mv.delta_suffix)
            + _numcell(a["latency_p50_ms"], ".3f", suffix="" if where in (None, "host") else f" ({_e(where)})")
            + (_cell(f"{ci[0]:.3f} - {ci[1]:.3f}", "num") if ci else _cell(NOT_MEASURED, "num na"))
            + _numcell(a.get("latency_p90_ms"), ".3f")
            + (_cell(_e(_bytes(a["size_bytes"])), "num") if a["size_bytes"] is not None
               else _cell("built on device", "num na"))
            + _numcell(a.get("params"), ",d", na="n/a")
            + _numcell(None if a.get("macs") is None else a["macs"] / 1e6, ".2f", na="n/a")
            + "</tr>")
    head = [("artifact", False), ("target", False), ("engine, precision", False), (mv.name, True),
            ("Δ vs teacher", True), ("host p50 ms", True), ("p50 95% CI ms", True), ("p90 ms", True),
            ("size", True), ("params", True), ("MMACs", True)]
    return _table(head, rows)


def _badge(ok: bool | None) -> str:
    return {True: '<span class="badge met">met</span>', False: '<span class="badge missed">missed</span>',
            None: f'<span class="badge na">{NOT_MEASURED}</span>'}[ok]


def _target_card(t: dict, mv: MetricView, report: dict | None = None) -> str:
    m, b, ok = t["measured"], t["budgets"], t["budgets_met"]
    drop = m.get("accuracy_drop")
    items = [
        f"<li>deliverable: <b>{_e(t.get('deliverable') or 'none')}</b>; engine: {_e(t.get('engine', ''))}</li>",
        f"<li>{_e(mv.name)} {'drop' if (drop or 0) >= 0 else 'gain (a negative drop)'} "
        f"{_unit(mv.v(None if drop is None else abs(drop)), mv.fmt, mv.delta_suffix.strip())} (budget: at most "
        f"{mv.v(b['max_accuracy_drop']):{mv.fmt}}{mv.delta_suffix} worse; {mv.direction}) {_badge(ok.get('accuracy'))}</li>",
        f"<li>size {_unit(m.get('size_mb'), '.3f', 'MB')} (budget {_unit(b.get('max_size_mb'), '.2f', 'MB', 'none')}) "
        f"{_badge(ok.get('size'))}</li>",
        f"<li>device p50 {_unit(m.get('latency_p50_ms'), '.3f', 'ms')} (budget "
        f"{_unit(b.get('latency_ms'), '.2f', 'ms', 'none')}) {_badge(ok.get('latency'))}; host p50 "
        f"{_unit(m.get('host_latency_p50_ms'), '.3f', 'ms')}</li>",
    ]
    if t.get("roofline_bound_ms") is not None:
        items.append(f"<li>roofline lower bound {t['roofline_bound_ms']:.4f} ms (a bound, not a measurement)</li>")
    cal = t.get("calibration")
    if cal:
        items.append(f"<li>calibration {_e(cal.get('name'))} ({_e(cal.get('size'))} samples, seed {_e(cal.get('seed'))}, "
                     f"sha256 {_e(str(cal.get('sha256', ''))[:12])}), method {_e(t.get('calibration_method', ''))}</li>")
    items += [f"<li>note: {_e(n)}</li>" for n in t.get("notes", [])]
    side = device_table.rows(report, t) if report else []
    table = _table([("host vs device", False), ("host", True), ("device", True), ("device − host", True)],
                   ["<tr>" + "".join(_cell(_e(v), "num" if i else "") for i, v in enumerate(r)) + "</tr>" for r in side]
                   ) if side else ""
    return (f'<div class="card"><h3>{_e(t["name"])}: {_e(t.get("device", ""))}</h3>'
            f'<div class="muted">{_e(t["backend"])}, {_e(t.get("precision", ""))}</div><ul>{"".join(items)}</ul>'
            f'{table}</div>')


def _stages_table(report: dict) -> str:
    wall = report.get("stage_wall_s", {})
    rows = [f"<tr>{_cell(_e(n))}{_cell(_e(s))}{_numcell(wall.get(n), '.1f', na='')}</tr>"
            for n, s in report["stages"].items()]
    return _table([("stage", False), ("status", False), ("wall s", True)], rows)


# ---------------------------------------------------------------- page
def _pruning_section(report: dict) -> str:
    """The MACs prune reached and the channel groups it left unpruned (root, members, why)."""
    p = report.get("pruning")
    if not p:
        return ""
    goal = p.get("macs_goal_fraction")
    head = (f"<p>MACs {p['macs_fraction']:.3f} of the teacher" + (f" (goal {goal:.3f}"
            + (", not reached" if p.get("met") is False else "") + ")" if goal is not None else "")
            + f", params {p['params_fraction']:.3f}.</p>")
    groups = p.get("excluded_groups") or []
    if not groups:
        return f'<section id="pruning"><h2>Pruning</h2>{head}<p class="note">Every channel group was prunable.</p></section>'
    def members(g: dict) -> str:
        m = g.get("members") or []
        return ", ".join(m[:4]) + (f" (+{len(m) - 4})" if len(m) > 4 else "")
    rows = "".join(f"<tr><td>{_e(g['root'])}</td><td>{_e(members(g))}</td><td>{_e((g.get('reason') or '')[:200])}</td></tr>"
                   for g in groups)
    return (f'<section id="pruning"><h2>Pruning</h2>{head}<p>{len(groups)} channel group(s) left unpruned '
            f"(torch-pruning cannot follow them):</p><table><thead><tr><th>root module</th><th>members</th>"
            f"<th>reason</th></tr></thead><tbody>{rows}</tbody></table></section>")


def html(report: dict) -> str:
    """The whole report as one self-contained HTML page (no scripts, no network)."""
    colors = _color_of(report)
    host = report.get("host", {})
    teacher = report.get("teacher_accuracy")
    tools = ", ".join(f"{k} {v}" for k, v in report.get("toolchain", {}).items() if v)
    title = f"edge-compress report: {report.get('model', 'model')} -> {report['target']}"
    parts = [
        '<!DOCTYPE html>\n<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8"/>'
        '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>",
        f"<header><h1>{_e(title)}</h1><p class=\"sub\">Data {_e(report.get('data', '?'))} "
        f"({_e(report.get('test_samples', '?'))} test samples); metric {_e(MetricView(report).label)}; teacher "
        f"{_unit(MetricView(report).v(teacher), MetricView(report).fmt, MetricView(report).suffix)}. Created {_e(report['created'])} by edge-compress "
        f"{_e(report.get('tool_version', '?'))} on {_e(host.get('cpu', 'unknown CPU'))} ({_e(host.get('cores', '?'))} "
        f"cores). Latency is measured on this host unless marked otherwise; \"{NOT_MEASURED}\" means it cannot "
        f"be measured on this host.</p></header>",
        '<section id="targets"><h2>Targets and budgets</h2><div class="cards">'
        + "".join(_target_card(t, MetricView(report), report) for t in report["targets"]) + "</div></section>",
        f'<section id="tradeoff"><h2>Accuracy vs host latency</h2>{_scatter(report, colors)}</section>',
        f'<section id="sizes"><h2>Size at each step</h2>{_waterfall(report, colors)}</section>',
        '<section id="attribution"><h2>What each step did</h2><p class="note">Teacher -&gt; pruned -&gt; '
        "distilled -&gt; INT8 -&gt; engine. Changes are against the row above; latency is host p50, batch 1.</p>"
        + "".join(_attribution(report, t) for t in report["targets"]) + "</section>",
        f'<section id="artifacts"><h2>All artifacts</h2>{_artifacts_table(report)}</section>',
        _pruning_section(report),
        f'<section id="stages"><h2>Stages</h2>{_stages_table(report)}'
        f'<p class="note">Toolchain: {_e(tools or "not recorded")}.</p></section>',
        f"<footer>Self-contained page: inline CSS and SVG, nothing loaded from the network. Schema "
        f"{_e(report['schema_version'])}.</footer></main></body></html>\n",
    ]
    return "".join(parts)
