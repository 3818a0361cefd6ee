"""Render a report dict as Markdown (reads well as a pull-request comment)."""
from __future__ import annotations

from pipeline.report import device_table


def _f(v, fmt: str, none: str = "n/a") -> str:
    return none if v is None else format(v, fmt)


class MetricView:
    """How a report's primary metric is shown: fractions as percent and points, other metrics as they are."""

    def __init__(self, report: dict):
        m = report.get("metric") or {"name": "top1", "higher_is_better": True, "unit": "fraction"}
        self.name, self.higher = m["name"], bool(m["higher_is_better"])
        self.fraction = m.get("unit") == "fraction"
        self.scale = 100.0 if self.fraction else 1.0
        self.suffix, self.delta_suffix = ("%", " pt") if self.fraction else ("", "")
        self.fmt, self.delta_fmt = (".2f", "+.2f") if self.fraction else (".4g", "+.4g")
        self.direction = "higher is better" if self.higher else "lower is better"
        self.label = f"{'accuracy' if self.name == 'top1' else self.name} ({self.direction})"

    def v(self, x):
        return None if x is None else x * self.scale


def host_proxy(report: dict, a: dict) -> bool:
    """Whether artifact row `a` is a host stand-in for its target's engine (the QDQ ONNX of a TensorRT
    target run by ONNX Runtime on this CPU): its accuracy checks the INT8 numerics, its time is not a
    latency of anything the device runs, so no table or plot shows it as one."""
    backend = next((t["backend"] for t in report.get("targets", []) if t["name"] == a.get("target")), None)
    return backend is not None and a.get("backend") != backend and a.get("latency_where") != "device"


def shown_latency(report: dict, a: dict) -> float | None:
    """The p50 a table may show as a latency: none for a host proxy."""
    return None if host_proxy(report, a) else a.get("latency_p50_ms")


def host_line(report: dict, t: dict) -> str:
    """The target's host figure, or why there is none to show."""
    d = next((a for a in report["artifacts"] if a["name"] == t.get("deliverable")), None)
    if d is not None and host_proxy(report, d):
        return "no host latency: the host runs a proxy (numerics check), not the engine"
    return f"host p50 {_f(t['measured'].get('host_latency_p50_ms'), '.3f')} ms"


def verdict(report: dict, t: dict) -> str:
    """One line for a target: which budgets the deliverable fits, which it misses, what is not known yet."""
    mv = MetricView(report)
    m, b, ok = t["measured"], t["budgets"], t["budgets_met"]
    acc_name = "accuracy" if mv.name == "top1" else mv.name
    judged: dict[bool, list[tuple[str, str]]] = {True: [], False: []}
    drop = m.get("accuracy_drop")
    if ok.get("accuracy") is not None:
        how = (f"a gain of {_f(mv.v(-drop), mv.fmt)}{mv.delta_suffix} over the teacher" if drop < 0 else
               f"{mv.name} drop {_f(mv.v(drop), mv.fmt)}{mv.delta_suffix}")
        judged[ok["accuracy"]].append((acc_name, f"{how}; budget {mv.v(b['max_accuracy_drop']):{mv.fmt}}{mv.delta_suffix}"))
    if b.get("max_size_mb") is not None and ok.get("size") is not None:
        judged[ok["size"]].append(("size", f"{_f(m.get('size_mb'), '.2f')} MB; budget {b['max_size_mb']:g} MB"))
    parts = [f"{word} the {' and '.join(n for n, _ in judged[key])} budget{'s' if len(judged[key]) > 1 else ''} "
             f"({'; '.join(d for _, d in judged[key])})" for key, word in ((False, "MISSES"), (True, "fits"))
             if judged[key]]
    if ok.get("accuracy") is None:
        parts.append(f"{mv.name} not measured here")
    if m.get("latency_p50_ms") is not None:
        budget = b.get("latency_ms")
        judge = ("no latency budget" if budget is None or ok.get("latency") is None else
                 f"{'within' if ok['latency'] else 'OVER'} the {budget:g} ms latency budget")
        parts.append(f"device latency p50 {m['latency_p50_ms']:.3f} ms ({judge})")
    else:
        bound = t.get("roofline_bound_ms")
        parts.append("device latency not measured yet: run `bench` on the device"
                     + (f" (roofline lower bound {bound:.4f} ms: a bound, not a measurement)" if bound is not None else ""))
    return f"{t['name']}: " + "; ".join(parts)


def markdown(r: dict) -> str:
    mv = MetricView(r)
    lines = [f"# edge-compress report: {r['model']} -> {r['target']}", "",
             f"Data: {r['data']} ({r['test_samples']} test samples). Metric: {mv.label}. Teacher {mv.name} "
             f"{_f(r['teacher_accuracy'], '.4f')}. Created {r['created']}. Host: {r['host']['cpu']} "
             f"({r['host']['cores']} cores). Latency is measured on this host unless marked otherwise; "
             f"n/a means it cannot be measured here; a host proxy's time is not a latency and is not shown.", "",
             *[f"**{verdict(r, t)}**" + "  " for t in r["targets"]], "",
             f"| artifact | backend | precision | {mv.name} | Δ vs teacher | p50 ms | p90 ms | size KB | params | MMACs |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for a in r["artifacts"]:
        delta = mv.v(a["accuracy_delta"])
        lines.append(
            f"| {a['name']}{' ✓' if a.get('selected') else ''} | {a['backend']} | {a['precision']} | "
            f"{_f(a['accuracy'], '.4f')} | {_f(delta, mv.delta_fmt, 'n/a')}{'' if delta is None else mv.delta_suffix} | "
            + ("not a latency (host proxy) | | " if host_proxy(r, a) else
               f"{_f(a['latency_p50_ms'], '.3f')} | {_f(a['latency_p90_ms'], '.3f')} | ")
            + f"{_f(None if a['size_bytes'] is None else a['size_bytes'] / 1024, '.1f')} | "
            f"{_f(a['params'], ',d')} | {_f(None if a['macs'] is None else a['macs'] / 1e6, '.2f')} |")
    lines += ["", "## Targets", ""]
    for t in r["targets"]:
        m, b, ok = t["measured"], t["budgets"], t["budgets_met"]
        mark = {True: "met", False: "**missed**", None: "not measured here"}
        lines += [f"### {t['name']} ({t['device']}, {t['backend']}, {t['precision']})", "",
                  f"- deliverable: {t['deliverable']}; engine: {t['engine']}",
                  f"- {mv.name} {'drop' if (m['accuracy_drop'] or 0) >= 0 else 'gain (a negative drop: better than the teacher)'} "
                  f"{_f(mv.v(None if m['accuracy_drop'] is None else abs(m['accuracy_drop'])), mv.fmt)}{mv.delta_suffix} "
                  f"(budget {mv.v(b['max_accuracy_drop']):{mv.fmt}}{mv.delta_suffix}; {mv.direction}): {mark[ok['accuracy']]}",
                  f"- size {_f(m['size_mb'], '.3f')} MB (budget {_f(b['max_size_mb'], '.2f')} MB): {mark[ok['size']]}",
                  f"- device latency {_f(m['latency_p50_ms'], '.3f')} ms (budget {_f(b['latency_ms'], '.2f')} ms): "
                  f"{mark[ok['latency']]}; {host_line(r, t)}; "
                  f"roofline lower bound {_f(t['roofline_bound_ms'], '.4f')} ms (a bound, not a measurement)",
                  f"- calibration: {t['calibration']['name']} ({t['calibration']['size']} samples, seed "
                  f"{t['calibration']['seed']}, sha256 {t['calibration']['sha256'][:12]}), method {t['calibration_method']}"]
        lines += [f"- note: {n}" for n in t["notes"]]
        lines += device_table.markdown_lines(r, t)
        lines.append("")
    lines += pruning_lines(r)
    lines += shape_table(r)
    lines += ["## Stages", "", "| stage | status | wall s |", "| --- | --- | ---: |"]
    for name, status in r["stages"].items():
        lines.append(f"| {name} | {status} | {_f(r['stage_wall_s'].get(name), '.1f', '')} |")
    lines.append("")
    return "\n".join(lines)


def shape_table(r: dict) -> list[str]:
    """"Latency by shape": one row per declared shape (--dynamic), one column per artifact timed at more
    than its one fixed shape. Host proxies (a TensorRT QDQ ONNX in ONNX Runtime) are not latencies of the
    deliverable and are left out; fixed-shape artifacts (TFLite) are named under the table."""
    rows = [a for a in r["artifacts"] if a.get("latency_by_shape") and not a.get("host_proxy_of")]
    if not rows:
        return []
    timed = [a for a in rows if sum(s["p50_ms"] is not None for s in a["latency_by_shape"]) > 1]
    fixed = [a for a in rows if a not in timed]
    dyn = ", ".join(f"{k}={lo}..{hi}" for k, (lo, hi) in (r.get("dynamic") or {}).items())
    out = ["## Latency by shape (host p50 ms)", "", f"Dynamic axes: {dyn}." if dyn else "", "",
           "| shape | " + " | ".join(a["name"] for a in timed) + " |", "| --- |" + " ---: |" * len(timed)]
    for i, s in enumerate((timed or rows)[0]["latency_by_shape"]):
        out.append(f"| {s['shape']} | " + " | ".join(_f(a["latency_by_shape"][i]["p50_ms"], ".3f") for a in timed) + " |")
    for a in fixed:
        one = next((s for s in a["latency_by_shape"] if s["p50_ms"] is not None), None)
        out.append(f"\n{a['name']}: fixed input shape" + (f" ({one['shape']}: {one['p50_ms']:.3f} ms)" if one else "")
                   + "; other shapes need another export.")
    return [*out, ""]


def pruning_lines(r: dict) -> list[str]:
    """"Pruning": the MACs reached against the goal, and each channel group left unpruned, with why."""
    p = r.get("pruning")
    if not p:
        return []
    goal = p.get("macs_goal_fraction")
    out = ["## Pruning", "", f"MACs {p['macs_fraction']:.3f} of the teacher" + (f" (goal {goal:.3f}" + (
        ", not reached" if p.get("met") is False else "") + ")" if goal is not None else "")
           + f", params {p['params_fraction']:.3f}."]
    groups = p.get("excluded_groups") or []
    if groups:
        out += ["", f"{len(groups)} channel group(s) left unpruned (torch-pruning cannot follow them):", "",
                "| root module | members | reason |", "| --- | --- | --- |"]
        for g in groups:
            members = g.get("members") or []
            shown = ", ".join(members[:4]) + (f" (+{len(members) - 4})" if len(members) > 4 else "")
            out.append(f"| {g['root']} | {shown} | {(g.get('reason') or '')[:160]} |")
    return [*out, ""]
