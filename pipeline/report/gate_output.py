"""What the gate prints and writes: the terminal summary, JUnit XML for CI, Markdown for a PR comment."""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from pipeline.errors import UserError
from pipeline.hashing import sha256_file
from pipeline.report.gate import GateResult, load_report, run_folder
from pipeline.runner import write_json


ICON = {"pass": "PASS", "fail": "FAIL", "skip": "skip"}


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
    verdict = "FAIL" if n_fail else "PASS"
    lines.append(f"gate: {verdict}: {n_fail} regression(s), {len(result.checks) - n_fail - n_skip} passed, "
                 f"{n_skip} skipped; latency mode: {', '.join(modes) or 'none (nothing to time)'}")
    return "\n".join(lines)


def junit_xml(result: GateResult) -> str:
    """JUnit XML: one testcase per check (classname = artifact, name = check), failures and skips marked."""
    n_fail, n_skip = len(result.failures), sum(c.status == "skip" for c in result.checks)
    total = sum(c.seconds for c in result.checks)
    suites = ET.Element("testsuites", name="edge-compress gate", tests=str(len(result.checks)),
                        failures=str(n_fail), skipped=str(n_skip), errors="0", time=f"{total:.3f}")
    suite = ET.SubElement(suites, "testsuite", name=f"gate.{result.target}", tests=str(len(result.checks)),
                          failures=str(n_fail), skipped=str(n_skip), errors="0", time=f"{total:.3f}")
    props = ET.SubElement(suite, "properties")
    for k, v in (("candidate", result.candidate), ("baseline", result.baseline), ("target", result.target),
                 ("max_accuracy_drop", result.budget.max_accuracy_drop),
                 ("max_latency_regression_pct", result.budget.max_latency_regression_pct),
                 ("max_size_mb", result.budget.max_size_mb)):
        ET.SubElement(props, "property", name=k, value=str(v))
    for c in result.checks:
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


def markdown(result: GateResult) -> str:
    """A summary for a pull-request comment or $GITHUB_STEP_SUMMARY."""
    b = result.budget
    mark = {"pass": "✅ pass", "fail": "❌ **FAIL**", "skip": "➖ skip"}
    n_fail = len(result.failures)
    lines = [f"## edge-compress gate ({result.target}): {'❌ FAIL' if n_fail else '✅ PASS'}", "",
             f"Candidate `{result.candidate}` vs baseline `{result.baseline}`. Budgets: accuracy drop ≤ "
             f"{b.max_accuracy_drop * 100:.2f} pt vs baseline; host latency regression ≤ "
             f"{b.max_latency_regression_pct:g}% (beyond measurement noise); size ≤ "
             f"{'no budget' if b.max_size_mb is None else f'{b.max_size_mb:g} MB'} per {result.target} artifact.", "",
             "| result | artifact | check | mode | details |", "| --- | --- | --- | --- | --- |"]
    for c in result.checks:
        lines.append(f"| {mark[c.status]} | {c.artifact} | {c.kind} | {c.mode or ''} | "
                     f"{c.message.replace('|', '/')} |")
    lines += ["", f"{n_fail} regression(s). Latency modes: *interleaved* times baseline and candidate "
              "alternately on this machine and fails only when the 95% CI of the slowdown lies above the budget; "
              "*stored* compares recorded p50s with their CIs and a drift margin.", ""]
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
