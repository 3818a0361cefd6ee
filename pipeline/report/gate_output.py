"""What the gate prints and writes: the terminal summary, JUnit XML for CI, Markdown for a PR comment."""
from __future__ import annotations

import copy
import os
import re
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from pipeline.errors import UserError
from pipeline.hashing import sha256_file
from pipeline.report.gate import Check, GateResult, load_report, run_folder
from pipeline.runner import write_json


ICON = {"pass": "PASS", "fail": "FAIL", "skip": "skip"}
VERDICT = {"pass": "PASS", "fail": "FAIL", "no latency compared": "NO LATENCY COMPARED (not a pass)",
           "pass (latency not compared)": "PASS (latency not compared)"}
NOT_COMPARED = "the latency of what the target ships was not compared"
NOT_COMPARED_FIX = ("give --baseline-run with the baseline's run folder (timed here, interleaved), gate on the host "
                    "that measured the baseline, or pass --allow-no-latency to accept a gate without latency")


def text(result: GateResult) -> str:
    """The terminal summary: one line per check and the verdict."""
    b = result.budget
    lines = [f"gate: {result.candidate} vs baseline {result.baseline} (target {result.target}; budgets: accuracy "
             f"drop <= {b.max_accuracy_drop * 100:.2f} pt, latency regression <= {b.max_latency_regression_pct:g}%, "
             f"size <= {'none' if b.max_size_mb is None else f'{b.max_size_mb:g} MB'})"]
    for c in result.checks:
        mode = f" [{c.mode}]" if c.mode else ""
        lines.append(f"  {ICON[c.status]:4} {c.kind:8} {c.artifact}{mode}: {c.message}")
    modes = sorted({c.mode for c in result.checks if c.kind == "latency" and c.status != "skip" and c.mode})
    n_fail, n_skip = len(result.failures), sum(c.status == "skip" for c in result.checks)
    lines.append(f"gate: {VERDICT[result.outcome]}: {n_fail} regression(s), {len(result.checks) - n_fail - n_skip} "
                 f"passed, {n_skip} skipped; latency mode: {', '.join(modes) or 'none (nothing to time)'}")
    if not result.latency_compared:
        lines.append(f"gate: {NOT_COMPARED}" + (" (allowed: --allow-no-latency)" if result.allow_no_latency else
                                                 f" -- fix: {NOT_COMPARED_FIX}"))
    return "\n".join(lines)


def _all_checks(result: GateResult) -> list[Check]:
    """The checks, plus one for the gate itself when the deliverable's latency was not compared: failed
    unless --allow-no-latency (then skipped), so CI tools that only read JUnit see it too."""
    if result.latency_compared:
        return list(result.checks)
    return [*result.checks, Check("gate", "latency", "skip" if result.allow_no_latency else "fail", NOT_COMPARED)]


def junit_xml(result: GateResult) -> str:
    """JUnit XML: one testcase per check (classname = artifact, name = check), failures and skips marked."""
    checks = _all_checks(result)
    n_fail, n_skip = sum(c.status == "fail" for c in checks), sum(c.status == "skip" for c in checks)
    total = sum(c.seconds for c in checks)
    suites = ET.Element("testsuites", name="edge-compress gate", tests=str(len(checks)),
                        failures=str(n_fail), skipped=str(n_skip), errors="0", time=f"{total:.3f}")
    suite = ET.SubElement(suites, "testsuite", name=f"gate.{result.target}", tests=str(len(checks)),
                          failures=str(n_fail), skipped=str(n_skip), errors="0", time=f"{total:.3f}")
    props = ET.SubElement(suite, "properties")
    for k, v in (("candidate", result.candidate), ("baseline", result.baseline), ("target", result.target),
                 ("max_accuracy_drop", result.budget.max_accuracy_drop),
                 ("max_latency_regression_pct", result.budget.max_latency_regression_pct),
                 ("max_size_mb", result.budget.max_size_mb), ("outcome", result.outcome)):
        ET.SubElement(props, "property", name=k, value=str(v))
    for c in checks:
        case = ET.SubElement(suite, "testcase", classname=c.artifact, name=c.kind + (f" ({c.mode})" if c.mode else ""),
                             time=f"{c.seconds:.3f}")
        if c.status == "fail":
            ET.SubElement(case, "failure", message=c.message, type="regression").text = c.message
        elif c.status == "skip":
            ET.SubElement(case, "skipped", message=c.message)
        else:
            ET.SubElement(case, "system-out").text = c.message
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


_ABS_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/:;,()'\"`|]+/)*[^\s/:;,()'\"`|]+")


def no_abs_paths(text: str, root: Path | None = None) -> str:
    """`text` with every absolute path made relative to `root` (default: the working folder) when it lies
    under it, else cut to its last two parts: a PR comment names files, not the runner's disk."""
    root = (root or Path.cwd()).resolve()

    def rel(m: re.Match) -> str:
        p = Path(m.group(0))
        try:
            return p.resolve().relative_to(root).as_posix()
        except ValueError:
            return "…/" + "/".join(p.parts[-2:])
    return _ABS_PATH.sub(rel, text)


MARK = {"pass": "✅ pass", "fail": "❌ **FAIL**", "skip": "➖ skip"}
HEADLINE = {"pass": "✅ PASS", "fail": "❌ FAIL", "no latency compared": "⚠️ NO LATENCY COMPARED (not a pass)",
            "pass (latency not compared)": "✅ PASS (latency not compared)"}


def _fig(c: Check, v: float | None, metric) -> str:
    if v is None:
        return "n/a"
    if c.kind == "accuracy":
        return f"{v * 100:.2f}%" if metric.unit == "fraction" else f"{v:.4g}"
    return f"{v:.3f} MB" if c.kind == "size" else f"{v:.3f} ms"


def _delta(c: Check, metric) -> str:
    b, v = c.baseline, c.candidate
    if c.kind == "latency" and c.ratio is not None:
        return f"{(c.ratio - 1) * 100:+.1f}%" + (" (interleaved ratio)" if c.mode == "interleaved" else "")
    if b is None or v is None:
        return ""
    if c.kind == "accuracy":
        return f"{(v - b) * 100:+.2f} pt" if metric.unit == "fraction" else f"{v - b:+.4g} ({metric.direction})"
    return f"{(v / b - 1) * 100:+.1f}%" if b else ""


def _rows(checks: list[Check], metric, with_artifact: bool) -> list[str]:
    head = (["artifact"] if with_artifact else []) + ["check", "baseline", "candidate", "Δ", "result", "details"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for c in checks:
        kind = c.kind + (f" ({c.mode})" if c.mode else "")
        cells = ([c.artifact] if with_artifact else []) + [
            kind, _fig(c, c.baseline, metric), _fig(c, c.candidate, metric), _delta(c, metric), MARK[c.status],
            no_abs_paths(c.message).replace("|", "/")]
        out.append("| " + " | ".join(cells) + " |")
    return out


def markdown(result: GateResult) -> str:
    """A pull-request comment (or $GITHUB_STEP_SUMMARY): the verdict, then what the target ships with
    baseline / candidate / Δ, the intermediate and comparison models folded away; no absolute paths."""
    b, metric = result.budget, result.metric
    gated = result.shipped or result.target_artifacts
    lead = [c for c in result.checks if c.artifact in gated]
    rest = [c for c in result.checks if c.artifact not in gated]
    lines = [f"## edge-compress gate ({result.target}): {HEADLINE[result.outcome]}", ""]
    if not result.latency_compared:
        lines += [f"> **{NOT_COMPARED}.** Fix: {NOT_COMPARED_FIX}.", ""]
    lines += [f"Candidate `{no_abs_paths(str(result.candidate))}` vs baseline `{no_abs_paths(str(result.baseline))}`. "
              f"Budgets: accuracy drop ≤ {b.max_accuracy_drop * 100:.2f} pt vs baseline; host latency regression ≤ "
              f"{b.max_latency_regression_pct:g}% (beyond measurement noise); size ≤ "
              f"{'no budget' if b.max_size_mb is None else f'{b.max_size_mb:g} MB'} for what {result.target} ships.", ""]
    for name in sorted({c.artifact for c in lead}):
        lines += [f"### Deliverable: {name}", "", *_rows([c for c in lead if c.artifact == name], metric, False), ""]
    if rest:
        n_fail = sum(c.status == "fail" for c in rest)
        lines += ["<details><summary>Intermediate and comparison models: "
                  f"{len({c.artifact for c in rest})} artifacts, {len(rest)} checks, {n_fail} regression(s)"
                  "</summary>", "", *_rows(rest, metric, True), "", "</details>", ""]
    lines += [f"{len(result.failures)} regression(s). Latency modes: *interleaved* times baseline and candidate "
              "alternately on this machine and fails only when the 95% CI of the slowdown lies above the budget; "
              "*stored* compares recorded p50s with their CIs and a drift margin. Host latency of a host proxy (e.g. "
              "the QDQ ONNX of a TensorRT target in ONNX Runtime) tracks regressions in the model, not the device's "
              "speed.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- baselines
TRIM_KEYS = frozenset({"samples_ms"})


def trim(report: dict) -> dict:
    """A copy without bulky per-run data (TRIM_KEYS, at any depth); the schema is unchanged."""
    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items() if k not in TRIM_KEYS}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v
    return walk(copy.deepcopy(report))


def update_baseline(candidate_path: Path, baseline_path: Path) -> tuple[Path, int]:
    """Write the trimmed candidate as the baseline, with `run_dir` and each artifact file's sha256.
    Returns the path and how many artifact files were hashed."""
    cand = load_report(candidate_path, "candidate")
    run = run_folder(candidate_path, cand)
    out = trim(cand)
    hashed = 0
    for a in out["artifacts"]:
        a.pop("sha256", None)
        if a.get("file") and (run / a["file"]).is_file():
            a["sha256"] = sha256_file(run / a["file"])
            hashed += 1
    baseline_path = Path(baseline_path)
    baseline_path.parent.mkdir(parents=True, exist_ok=True)
    out["run_dir"] = os.path.relpath(run.resolve(), baseline_path.resolve().parent)
    write_json(baseline_path, out)
    return baseline_path, hashed


def write_outputs(result: GateResult, junit: Path | None, md: Path | None) -> None:
    """Write the JUnit XML and the Markdown summary where asked (parent folders are created)."""
    for path, render in ((junit, junit_xml), (md, markdown)):
        if path:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).write_text(render(result))
            except OSError as e:
                raise UserError(f"cannot write {path}: {e.strerror}", "pass a writable file path") from None


def progress_to_stderr(msg: str) -> None:
    print(f"gate: {msg}", file=sys.stderr, flush=True)
