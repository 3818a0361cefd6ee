"""Host and device figures of one target side by side (after a device report was merged), with the
difference: for the Markdown report and the HTML one."""
from __future__ import annotations


def _isa(isa: dict | None) -> str | None:
    if not isa:
        return None
    return f"{isa.get('arch') or '?'}: {', '.join(isa.get('isa') or []) or 'no ISA flags'}"


def rows(report: dict, t: dict) -> list[tuple[str, str, str, str]]:
    """(figure, host, device, device - host) rows for a target with a merged device measurement; [] without."""
    d = t.get("device_measurement")
    if not d:
        return []
    from pipeline.report.render import MetricView, _f
    mv = MetricView(report)
    out = []
    ev = d.get("eval")
    if ev:
        diff = ev["difference"]
        out.append((f"{ev['metric']} on {ev['samples']} labelled samples ({ev['file']})",
                    _f(ev["host"], ".4f"), _f(ev["device"], ".4f"),
                    "n/a" if diff is None else f"{mv.v(diff):{mv.delta_fmt}}{mv.delta_suffix}"))
    host = d.get("host_latency_p50_ms") or t["measured"].get("host_latency_p50_ms")
    dev = d["latency_p50_ms"]
    ratio = f"{dev - host:+.3f} ms ({dev / host:.2f}x the host)" if host and dev is not None else "n/a"
    out.append(("latency p50 ms (batch 1)", _f(host, ".3f"), _f(dev, ".3f"), ratio))
    out.append(("latency p90 ms", "", _f(d.get("latency_p90_ms"), ".3f"), ""))
    out.append(("golden outputs: argmax agreement", "1.000 (reference)", _f(d.get("top1_agreement_golden"), ".3f"), ""))
    host_isa = (report.get("host") or {}).get("isa")
    out.append(("CPU / ISA", f"{(report.get('host') or {}).get('cpu', '?')} ({_isa(host_isa) or 'n/a'})",
                f"{d.get('device') or '?'} ({_isa(d.get('isa')) or 'n/a'})", ""))
    rt = d.get("runtime") or {}
    out.append(("runtime", "", f"{rt.get('version') or rt.get('name')}", ""))
    return out


def markdown_lines(report: dict, t: dict) -> list[str]:
    r = rows(report, t)
    if not r:
        return []
    lines = ["", f"Host and device ({t['device_measurement'].get('device') or 'device'}):", "",
             "| figure | host | device | device − host |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in r]
    return lines + [""]


def device_rows(report: dict, target: str, what: str) -> dict[str, dict]:
    """The artifact rows of `target` measured on the device (merged device reports), for `gate --device`."""
    from pipeline.errors import UserError
    rows = {a["name"]: a for a in report["artifacts"]
            if a.get("target") == target and a.get("latency_where") == "device"}
    if not rows:
        raise UserError(f"the {what} report has no device figures for target '{target}'",
                        "merge a device report into it first (python -m pipeline bench --remote USER@HOST --bundle "
                        "RUN/handoff, or report RUN --device-report FILE)")
    return rows
