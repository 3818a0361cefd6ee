"""Render a report dict as Markdown (reads well as a pull-request comment)."""
from __future__ import annotations


def _f(v, fmt: str, none: str = "n/a") -> str:
    return none if v is None else format(v, fmt)


def markdown(r: dict) -> str:
    lines = [f"# edge-compress report: {r['model']} -> {r['target']}", "",
             f"Data: {r['data']} ({r['test_samples']} test samples). Teacher accuracy "
             f"{_f(r['teacher_accuracy'], '.4f')}. Created {r['created']}. Host: {r['host']['cpu']} "
             f"({r['host']['cores']} cores). Latency is measured on this host unless marked otherwise; "
             f"n/a means it cannot be measured here.", "",
             "| artifact | backend | precision | accuracy | Δ vs teacher | p50 ms | p90 ms | size KB | params | MMACs |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for a in r["artifacts"]:
        delta = None if a["accuracy_delta"] is None else a["accuracy_delta"] * 100
        lines.append(
            f"| {a['name']}{' ✓' if a.get('selected') else ''} | {a['backend']} | {a['precision']} | "
            f"{_f(a['accuracy'], '.4f')} | {_f(delta, '+.2f', 'n/a')}{'' if delta is None else ' pt'} | "
            f"{_f(a['latency_p50_ms'], '.3f')} | {_f(a['latency_p90_ms'], '.3f')} | "
            f"{_f(None if a['size_bytes'] is None else a['size_bytes'] / 1024, '.1f')} | "
            f"{_f(a['params'], ',d')} | {_f(None if a['macs'] is None else a['macs'] / 1e6, '.2f')} |")
    lines += ["", "## Targets", ""]
    for t in r["targets"]:
        m, b, ok = t["measured"], t["budgets"], t["budgets_met"]
        mark = {True: "met", False: "**missed**", None: "not measured here"}
        lines += [f"### {t['name']} ({t['device']}, {t['backend']}, {t['precision']})", "",
                  f"- deliverable: {t['deliverable']}; engine: {t['engine']}",
                  f"- accuracy drop {_f(None if m['accuracy_drop'] is None else m['accuracy_drop'] * 100, '.2f')} pt "
                  f"(budget {b['max_accuracy_drop'] * 100:.2f} pt): {mark[ok['accuracy']]}",
                  f"- size {_f(m['size_mb'], '.3f')} MB (budget {_f(b['max_size_mb'], '.2f')} MB): {mark[ok['size']]}",
                  f"- device latency {_f(m['latency_p50_ms'], '.3f')} ms (budget {_f(b['latency_ms'], '.2f')} ms): "
                  f"{mark[ok['latency']]}; host p50 {_f(m['host_latency_p50_ms'], '.3f')} ms; "
                  f"roofline lower bound {_f(t['roofline_bound_ms'], '.4f')} ms (a bound, not a measurement)",
                  f"- calibration: {t['calibration']['name']} ({t['calibration']['size']} samples, seed "
                  f"{t['calibration']['seed']}, sha256 {t['calibration']['sha256'][:12]}), method {t['calibration_method']}"]
        lines += [f"- note: {n}" for n in t["notes"]]
        lines.append("")
    lines += ["## Stages", "", "| stage | status | wall s |", "| --- | --- | ---: |"]
    for name, status in r["stages"].items():
        lines.append(f"| {name} | {status} | {_f(r['stage_wall_s'].get(name), '.1f', '')} |")
    lines.append("")
    return "\n".join(lines)
