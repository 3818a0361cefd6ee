"""Render a report dict (pipeline/report/schema.py) as one self-contained `report.html`.

Nothing is fetched when the page opens: the CSS is inline and the plots are SVG drawn here, in Python.
The page holds, in this order:

- one verdict line per target (which budgets the deliverable fits or misses, what is not measured yet);
- one card per target: deliverable, engine status and each budget (met / missed / not measured here);
- a Pareto view of accuracy vs host p50 latency (frontier, accuracy budgets, a zoom where points overlap)
  of every artifact measured natively here; host proxies (a TensorRT target's QDQ ONNX in ONNX Runtime:
  a numerics check, not a latency) and artifacts without figures are named under the plot, never drawn,
  and no table shows a host proxy's time as a latency;
- a size waterfall: teacher -> pruned -> distilled -> each target's INT8 artifact, every step drawn
  against the step it came from;
- per target, the stage attribution table teacher -> pruned -> distilled -> INT8 -> engine: what each
  step did to accuracy, latency, size, parameters and MACs;
- every artifact, the stages (ran / cached, wall time) and the toolchain.

The output is well-formed XML (XHTML syntax in an HTML5 document), so tools can parse it as such.
"""
from __future__ import annotations
from pipeline.report.htmlkit import (NOT_MEASURED, SHARED_COLOR, SHARED_STAGES, _bytes, _cell, _change,  # noqa: F401
                                     _color_of, _deliverables, _e, _engine_of, _int8_of, _numcell, _pct_change,
                                     _shared, _table, _unit)
from pipeline.report.plots import _scatter, _waterfall
from pipeline.report import device_table
from pipeline.report.render import MetricView, host_line, host_proxy, shown_latency, verdict

PROXY = "host proxy: not a latency"

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
.verdict { margin:12px 0 4px; padding:10px 14px; border-radius:8px; border:1px solid var(--line); background:#fff;
           font-weight:600; }
.verdict.ok { border-left:6px solid var(--ok); } .verdict.bad { border-left:6px solid var(--bad); }
.verdict.open { border-left:6px solid var(--na); }
table { border-collapse:collapse; width:100%; background:#fff; font-size:13px; margin-top:6px; }
th, td { border:1px solid var(--line); padding:4px 7px; text-align:left; vertical-align:top; }
th { background:#eef1f5; font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
td.num { white-space:nowrap; } td.num .up, td.num .down { display:block; }
td.na { color:var(--na); font-style:italic; white-space:normal; }
td:first-child { min-width:120px; overflow-wrap:anywhere; }
.up { color:var(--bad); } .down { color:var(--ok); }
.note { font-size:13px; color:var(--muted); margin:6px 0 0; }
@media (max-width: 1000px) {
  main { padding:16px 10px 32px; }
  table { font-size:12px; } th, td { padding:3px 4px; }
  td:first-child { min-width:90px; }
  td.num { white-space:normal; }
}
footer { margin-top:36px; font-size:12px; color:var(--muted); }
"""



# ---------------------------------------------------------------- tables
def _latency_cell(report: dict, a: dict, prev: dict | None) -> str:
    """p50 with its change vs the row above when both are host figures; device figures are marked; a host
    proxy's time is not a latency and is not shown as one."""
    if host_proxy(report, a):
        return _cell(PROXY, "num na")
    lat = a.get("latency_p50_ms")
    if lat is None:
        return _numcell(None, ".3f")
    if a.get("latency_where") == "device":
        return _cell(f"{lat:.3f} (device)", "num")
    before = shown_latency(report, prev) if prev and prev.get("latency_where") != "device" else None
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
            + _latency_cell(report, a, prev)
            + (_cell(_e(_bytes(size, "built on device")), "num na") if size is None else
               _cell(f"{_e(_bytes(size))}{_change(_pct_change(size, prev.get('size_bytes') if prev else None))}", "num"))
            + _numcell(a.get("params"), ",d", na="n/a")
            + _numcell(None if macs is None else macs / 1e6, ".2f", na="n/a")
            + "</tr>")
        prev = a
    head = [("step", False), (mv.name, True), ("Δ vs previous", True), ("Δ vs teacher", True),
            ("host p50 ms (Δ)", True), ("size (Δ)", True), ("params", True), ("MMACs", True)]
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
            + (_cell(PROXY, "num na") + _cell("", "num na") if host_proxy(report, a) else
               _numcell(a["latency_p50_ms"], ".3f", suffix="" if where in (None, "host") else f" ({_e(where)})")
               + (_cell(f"{ci[0]:.3f} - {ci[1]:.3f}<br/>p90 {a['latency_p90_ms']:.3f}", "num")
                  if ci and a.get("latency_p90_ms") is not None else _cell(NOT_MEASURED, "num na")))
            + (_cell(_e(_bytes(a["size_bytes"])), "num") if a["size_bytes"] is not None
               else _cell("built on device", "num na"))
            + _numcell(a.get("params"), ",d", na="n/a")
            + _numcell(None if a.get("macs") is None else a["macs"] / 1e6, ".2f", na="n/a")
            + "</tr>")
    head = [("artifact", False), ("target", False), ("engine, precision", False), (mv.name, True),
            ("Δ vs teacher", True), ("p50 ms", True), ("p50 95% CI, p90 ms", True),
            ("size", True), ("params", True), ("MMACs", True)]
    return _table(head, rows)


def _badge(ok: bool | None) -> str:
    return {True: '<span class="badge met">met</span>', False: '<span class="badge missed">missed</span>',
            None: f'<span class="badge na">{NOT_MEASURED}</span>'}[ok]


def _target_card(report: dict, t: dict, mv: MetricView) -> str:
    m, b, ok = t["measured"], t["budgets"], t["budgets_met"]
    drop = m.get("accuracy_drop")
    items = [
        f"<li>deliverable: <b>{_e(t.get('deliverable') or 'none')}</b>; engine: {_e(t.get('engine', ''))}</li>",
        f"<li>{_e(mv.name)} {'drop' if (drop or 0) >= 0 else 'gain (a negative drop: better than the teacher)'} "
        f"{_unit(mv.v(None if drop is None else abs(drop)), mv.fmt, mv.delta_suffix.strip())} (budget: at most "
        f"{mv.v(b['max_accuracy_drop']):{mv.fmt}}{mv.delta_suffix} worse; {mv.direction}) {_badge(ok.get('accuracy'))}</li>",
        f"<li>size {_unit(m.get('size_mb'), '.3f', 'MB')} (budget {_unit(b.get('max_size_mb'), '.2f', 'MB', 'none')}) "
        f"{_badge(ok.get('size'))}</li>",
        f"<li>device p50 {_unit(m.get('latency_p50_ms'), '.3f', 'ms')} (budget "
        f"{_unit(b.get('latency_ms'), '.2f', 'ms', 'none')}) {_badge(ok.get('latency'))}; "
        f"{_e(host_line(report, t))}</li>",
    ]
    if t.get("roofline_bound_ms") is not None:
        items.append(f"<li>roofline lower bound {t['roofline_bound_ms']:.4f} ms (a bound, not a measurement)</li>")
    cal = t.get("calibration")
    if cal:
        items.append(f"<li>calibration {_e(cal.get('name'))} ({_e(cal.get('size'))} samples, seed {_e(cal.get('seed'))}, "
                     f"sha256 {_e(str(cal.get('sha256', ''))[:12])}), method {_e(t.get('calibration_method', ''))}</li>")
    items += [f"<li>note: {_e(n)}</li>" for n in t.get("notes", [])]
    side = device_table.rows(report, t)
    table = _table([("host vs device", False), ("host", True), ("device", True), ("device − host", True)],
                   ["<tr>" + "".join(_cell(_e(v), "num" if i else "") for i, v in enumerate(r)) + "</tr>" for r in side]
                   ) if side else ""
    return (f'<div class="card"><h3>{_e(t["name"])}: {_e(t.get("device", ""))}</h3>'
            f'<div class="muted">{_e(t["backend"])}, {_e(t.get("precision", ""))}</div><ul>{"".join(items)}</ul>'
            f'{table}</div>')


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


def _stages_table(report: dict) -> str:
    wall = report.get("stage_wall_s", {})
    rows = [f"<tr>{_cell(_e(n))}{_cell(_e(s))}{_numcell(wall.get(n), '.1f', na='')}</tr>"
            for n, s in report["stages"].items()]
    return _table([("stage", False), ("status", False), ("wall s", True)], rows)


def _verdicts(report: dict) -> str:
    """The top of the page: one line per target, the whole story at a glance."""
    lines = []
    for t in report["targets"]:
        ok = t["budgets_met"]
        cls = "bad" if False in ok.values() else ("ok" if ok.get("latency") is True else "open")
        lines.append(f'<p class="verdict {cls}">{_e(verdict(report, t))}</p>')
    return f'<section id="verdict">{"".join(lines)}</section>'


# ---------------------------------------------------------------- page
def html(report: dict, extra: str = "") -> str:
    """The whole report as one self-contained HTML page (no scripts, no network); `extra`: a task's own
    section (HTML), placed after the pruning section."""
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
        _verdicts(report),
        '<section id="targets"><h2>Targets and budgets</h2><div class="cards">'
        + "".join(_target_card(report, t, MetricView(report)) for t in report["targets"]) + "</div></section>",
        f'<section id="tradeoff"><h2>Accuracy vs host latency (Pareto view)</h2>{_scatter(report, colors)}</section>',
        f'<section id="sizes"><h2>Size at each step</h2>{_waterfall(report, colors)}</section>',
        '<section id="attribution"><h2>What each step did</h2><p class="note">Teacher -&gt; pruned -&gt; '
        "distilled -&gt; INT8 -&gt; engine. Changes are against the row above; latency is host p50, batch 1 "
        "(device figures marked); a host proxy's time is not a latency and is not shown.</p>"
        + "".join(_attribution(report, t) for t in report["targets"]) + "</section>",
        f'<section id="artifacts"><h2>All artifacts</h2>{_artifacts_table(report)}</section>',
        _pruning_section(report),
        extra,
        f'<section id="stages"><h2>Stages</h2>{_stages_table(report)}'
        f'<p class="note">Toolchain: {_e(tools or "not recorded")}.</p></section>',
        f"<footer>Self-contained page: inline CSS and SVG, nothing loaded from the network. Schema "
        f"{_e(report['schema_version'])}.</footer></main></body></html>\n",
    ]
    return "".join(parts)
