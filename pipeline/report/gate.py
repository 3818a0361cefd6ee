"""The CI gate: compare a candidate report.json with a baseline and fail only on a real regression.

    python -m pipeline gate runs/ci/report.json --baseline reports/baselines/jetson.json

Exit 0: every check passed (or was skipped with its reason) and the latency of what the target ships
was compared. Exit 1: at least one regression. Exit 2: a usage error (missing or malformed file,
unknown target, bad flag), one line with the fix. Exit 3: no regression found, but the deliverable's
latency was not compared (baseline files not on disk and stored figures from another host, or
nothing timed): a gate that timed nothing is not a pass. `--allow-no-latency` turns that into exit 0,
still printed as "PASS (latency not compared)".

What is compared
----------------
Every artifact name present in both reports, among the gated target's artifacts and the shared ones
(teacher, pruned, distilled; `target` null). Names found in only one report are listed as skipped.

- accuracy: fails when the candidate is more than `max_accuracy_drop` (0..1) below the baseline.
  Skipped when either figure is null or the two reports were scored on different numbers of test
  samples (then they are not the same measurement). Accuracy on a fixed test set is deterministic.
- size: fails when what the gated target ships (its deliverable) is larger than `max_size_mb`; shared
  and comparison artifacts (e.g. the FP32 twin of an INT8 deliverable)
  (not shipped to the device) and targets without a size budget pass. The change against the baseline
  is always reported. Sizes are deterministic.
- latency: fails only when the candidate is slower than the baseline by more than
  `max_latency_regression_pct` beyond what the measurement noise could explain (below). Never on noise.

Budgets come from the target profile (`pipeline.config.load_target`, its `[budgets]`: the accuracy
and size budgets and `max_latency_regression_pct`); the CLI flags override them. The target is the
report's target, or `--target NAME|PATH.toml` when the report covers several; the baseline must cover
it too.

Latency: two modes, chosen per artifact and printed with every check
---------------------------------------------------------------------
interleaved (preferred): when both artifact files are on disk and their engine runs here, both are
  loaded with the backend's Runner (`pipeline.backends.require(backend).Runner(path, threads=...)`)
  and timed in alternation: `rounds` rounds (`--interleaved-runs`, default 60), each a burst of
  `burst` (5) timed batch-1 inferences of the baseline and one of the candidate, in the order A B,
  then B A, so slow drift hits both alike; one untimed call starts each burst. Each round gives the
  ratio candidate / baseline of the two bursts' lower quartiles: load on the machine slows both halves
  of a round alike, so the ratio stays put where absolute times wander, and since other processes only
  ever add time to an inference, a burst's lower quartile tracks the model's own speed where its
  median also absorbs the neighbours' load. The gate takes the median of the per-round ratios and
  its distribution-free 95% confidence interval from order statistics (`pipeline.latency.median_ci`)
  and fails only when the interval's LOWER bound exceeds 1 + max_latency_regression_pct / 100.
  Timing uses 1 thread unless `--threads N`: a ratio of single-thread times is what a compute
  regression moves, and one thread is far less exposed to other processes on a shared CI machine.
  Measured with benchmarks/gate_noise.py on a 2-core host shared with other jobs (load average 3 to
  9), 20 gates per figure, a model with 15% more MACs (true slowdown 1.14-1.15x), 10% budget:
  1 thread, 0 of 20 false alarms and 19-20 of 20 detected (two runs); 2 threads, 0 of 20 false
  alarms but only 11 of 20 detected. Short bursts in many rounds beat long bursts in few: with 30
  rounds of 10 runs the self-comparison CI was twice as wide (and there lower quartiles caught 19
  of 20 where medians caught 17 of 20, on the same timings).
stored: otherwise the stored p50 figures are compared. A regression needs the candidate's lower CI
  bound of the median above the baseline's upper bound times (1 + budget/100 + STORED_DRIFT_MARGIN):
  two separate measurement sessions differ by more than their in-session CIs show (CPU frequency,
  neighbours, cache state), and that margin absorbs it. When both reports name their host and the
  hosts differ, latency is skipped: figures from different CPUs are not comparable.
Artifacts with null latency on both sides (a TensorRT engine "to be built on device") are skipped.
Figures measured on the device (`latency_where` "device", from a merged device report) are compared
in stored mode only, and only with another device figure.

Where artifact files are found (the run folder of a report)
-----------------------------------------------------------
An artifact's `file` is relative to its run folder. A report's run folder is, in this order:
1. for the baseline, `--baseline-run DIR` when given;
2. the report's own `run_dir` key, an absolute path or one relative to the folder holding the report
   (`--update-baseline` writes it);
3. the folder holding the report, or its parent when the report is the copy inside a run's `report/`
   stage folder (next to a `stage.json`).
A baseline artifact file is used only if it still is the baseline's file: when the baseline records
the file's `sha256` (`--update-baseline` does) it must match, and it must not be the very same file
as the candidate's (a later run into the same folder overwrote it). Otherwise that artifact falls
back to stored mode, with the reason printed.

The baseline file
-----------------
A report.json, or the trimmed copy `--update-baseline` writes: the candidate report without bulky
per-run samples (`samples_ms`), plus `run_dir` and each artifact file's `sha256`. Same schema; it is
meant to be committed as reports/baselines/<target>.json.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pipeline import backends
from pipeline.config import Target, load_target
from pipeline.errors import UserError
from pipeline.report import schema
from pipeline.report.device_table import device_rows
from pipeline.hashing import sha256_file
from pipeline.tasks import Metric
from pipeline.report.gate_timing import (BURST, BURST_QUANTILE, DEFAULT_ROUNDS, MIN_ROUNDS, TIMING_THREADS,  # noqa: F401
                                        WARMUP, Interleaved, timing_input, time_interleaved)

STORED_DRIFT_MARGIN = 0.10   # stored mode: extra allowance for session-to-session drift
Status = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class Budget:
    """The limits a candidate is held to (fractions for accuracy, percent for latency, MB for size)."""

    max_accuracy_drop: float
    max_latency_regression_pct: float
    max_size_mb: float | None


@dataclass(frozen=True)
class Check:
    """One comparison: an artifact and what was compared (accuracy, size, latency)."""

    artifact: str
    kind: Literal["accuracy", "size", "latency", "presence"]
    status: Status
    message: str
    mode: str | None = None  # latency: "interleaved" or "stored"
    seconds: float = 0.0
    # The figures compared, for tables (baseline / candidate / change): accuracy in the metric's units,
    # size in MB, latency in ms (interleaved: the bursts' lower quartiles, `ratio` the median ratio).
    baseline: float | None = None
    candidate: float | None = None
    ratio: float | None = None


@dataclass
class GateResult:
    candidate: Path
    baseline: Path
    target: str
    budget: Budget
    checks: list[Check] = field(default_factory=list)
    shipped: frozenset[str] = frozenset()   # the target's deliverable(s); empty: every target artifact
    target_artifacts: frozenset[str] = frozenset()
    allow_no_latency: bool = False
    metric: Metric = Metric("top1", True, "fraction")

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def latency_compared(self) -> bool:
        """Whether a latency check of what the target ships (or, with no deliverable named, of any of the
        target's own artifacts) was decided: pass or fail, not skipped."""
        gated = self.shipped or self.target_artifacts
        return any(c.kind == "latency" and c.status != "skip" and c.artifact in gated for c in self.checks)

    @property
    def outcome(self) -> Literal["pass", "fail", "no latency compared", "pass (latency not compared)"]:
        if self.failures:
            return "fail"
        if self.latency_compared:
            return "pass"
        return "pass (latency not compared)" if self.allow_no_latency else "no latency compared"

    @property
    def exit_code(self) -> int:
        return {"fail": 1, "no latency compared": 3}.get(self.outcome, 0)


# ---------------------------------------------------------------- reading reports
def load_report(path: Path, what: str) -> dict:
    """A report.json as a dict, schema-checked; every problem is one UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} report not found: {path}",
                        "pass the report.json of a finished run (runs/<run>/report.json)" if what == "candidate"
                        else "pass an existing baseline, or record one with --update-baseline")
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{what} report {path} is not readable JSON: {e}",
                        "pass a report.json written by `python -m pipeline run`") from None
    if not isinstance(report, dict):
        raise UserError(f"{what} report {path} is not a JSON object", "pass a report.json written by the pipeline")
    try:
        schema.validate(report)
        for a in report["artifacts"]:
            _check_types(a)
    except UserError as e:
        raise UserError(f"{what} report {path}: {e.problem}", e.fix) from None
    except (TypeError, KeyError) as e:
        raise UserError(f"{what} report {path} does not follow the report schema ({e})",
                        "regenerate the report with this version of the tool") from None
    return report


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_types(a: dict) -> None:
    """The fields the gate computes with have the schema's types (a hand-edited baseline may not)."""
    if not isinstance(a, dict) or not isinstance(a["name"], str) or not isinstance(a["backend"], str):
        raise UserError("an artifact is not an object with a name and a backend", "regenerate the report")
    for k in ("accuracy", "latency_p50_ms", "size_bytes"):
        if a[k] is not None and not _is_num(a[k]):
            raise UserError(f"artifact '{a['name']}': '{k}' is {a[k]!r}, not a number or null", "regenerate the report")
    ci = a.get("latency_ci95_ms")
    if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(_is_num(v) for v in ci)):
        raise UserError(f"artifact '{a['name']}': 'latency_ci95_ms' is {ci!r}, not [low, high]", "regenerate the report")
    for k in ("file", "target", "sha256"):
        if a.get(k) is not None and not isinstance(a[k], str):
            raise UserError(f"artifact '{a['name']}': '{k}' is {a[k]!r}, not a string or null", "regenerate the report")


def run_folder(report_path: Path, report: dict, override: Path | None = None) -> Path:
    """Where a report's artifact files live (see the module docstring, "Where artifact files are found")."""
    if override is not None:
        if not Path(override).is_dir():
            raise UserError(f"baseline run folder not found: {override}", "pass the run folder the baseline came from")
        return Path(override)
    here = Path(report_path).resolve().parent
    if isinstance(report.get("run_dir"), str):
        return here / report["run_dir"]
    if here.name == "report" and (here / "stage.json").is_file():
        return here.parent
    return here


def _target_names(report: dict) -> list[str]:
    return [n for n in str(report["target"]).split(",") if n]


def resolve_target(candidate: dict, baseline: dict, spec: str | None) -> Target:
    """The gated target's profile: `spec` (a name or .toml path) or the report's only target."""
    names = _target_names(candidate)
    if spec is None:
        if len(names) != 1:
            raise UserError(f"the candidate report covers targets {', '.join(names)}",
                            "pass --target NAME to gate one of them")
        spec = names[0]
    target = load_target(spec)
    if target.name not in names:
        raise UserError(f"target '{target.name}' is not in the candidate report (it covers {', '.join(names)})",
                        "pass --target with one of the report's targets")
    if target.name not in _target_names(baseline):
        raise UserError(f"the baseline covers {baseline['target']}, not target '{target.name}'",
                        f"pass the baseline for {target.name} (reports/baselines/{target.name}.json)")
    return target


def budget_for(target: Target, max_accuracy_drop: float | None = None,
               max_latency_regression_pct: float | None = None, max_size_mb: float | None = None,
               metric: Metric | None = None) -> Budget:
    """The target's budgets with any given override (the metric drop in the metric's own units)."""
    b = target.budgets
    fraction = metric is None or metric.unit == "fraction"
    if max_accuracy_drop is not None and (max_accuracy_drop < 0 or (fraction and max_accuracy_drop > 1)):
        raise UserError(f"--max-accuracy-drop {max_accuracy_drop} is outside 0..1", "give a fraction, e.g. 0.01 for 1 pt")
    if max_latency_regression_pct is not None and max_latency_regression_pct < 0:
        raise UserError(f"--max-latency-regression-pct {max_latency_regression_pct} is negative", "give a percentage >= 0")
    if max_size_mb is not None and max_size_mb <= 0:
        raise UserError(f"--max-size-mb {max_size_mb} is not positive", "give a size in MB above 0")
    return Budget(
        max_accuracy_drop=b.max_accuracy_drop if max_accuracy_drop is None else max_accuracy_drop,
        max_latency_regression_pct=(b.max_latency_regression_pct if max_latency_regression_pct is None
                                    else max_latency_regression_pct),
        max_size_mb=b.max_size_mb if max_size_mb is None else max_size_mb,
    )


# ---------------------------------------------------------------- checks
def _sides(b: object, c: object) -> str:
    """Which of baseline (b) and candidate (c) lack a figure."""
    return "baseline nor the candidate" if b is None and c is None else "baseline" if b is None else "candidate"


def report_metric(report: dict) -> Metric:
    """The report's primary metric (reports before schema 1.1: top-1 accuracy)."""
    m = report.get("metric") or {"name": "top1", "higher_is_better": True, "unit": "fraction"}
    return Metric(m["name"], bool(m["higher_is_better"]), m.get("unit", ""))


def check_accuracy(name: str, base: dict, cand: dict, budget: Budget, same_test_set: bool,
                   metric: Metric = Metric("top1", True, "fraction")) -> Check:
    b, c = base["accuracy"], cand["accuracy"]
    if b is None or c is None:
        return Check(name, "accuracy", "skip", f"{metric.name} not measured here in the {_sides(b, c)}")
    if not same_test_set:
        return Check(name, "accuracy", "skip", "the reports were scored on different test sets (test_samples differ)")
    drop = metric.worse_by(b, c)
    if metric.unit == "fraction":
        change = f"{(c - b) * 100:+.2f} pt; a drop of more than {budget.max_accuracy_drop * 100:.2f} pt fails"
    else:
        change = f"{c - b:+.4g}, {metric.direction}; worse by more than {budget.max_accuracy_drop:g} fails"
    msg = f"{metric.name} {c:.4f} vs baseline {b:.4f} ({change})"
    return Check(name, "accuracy", "fail" if drop > budget.max_accuracy_drop + 1e-12 else "pass", msg,
                 baseline=b, candidate=c)


def check_size(name: str, base: dict, cand: dict, budget: Budget, target: str, shipped: set[str]) -> Check:
    b, c = base["size_bytes"], cand["size_bytes"]
    if c is None:
        return Check(name, "size", "skip", "no file here (built on the device)")
    figs = {"baseline": None if b is None else b / 1e6, "candidate": c / 1e6}
    change = "" if not b else f", {(c / b - 1) * 100:+.1f}% vs baseline {b / 1e6:.3f} MB"
    if cand.get("target") != target:
        return Check(name, "size", "pass", f"{c / 1e6:.3f} MB{change}; shared artifact, not held to the device budget", **figs)
    if shipped and name not in shipped:  # reports that name no deliverable: every target artifact counts
        return Check(name, "size", "pass", f"{c / 1e6:.3f} MB{change}; not what the target ships (comparison artifact)", **figs)
    if budget.max_size_mb is None:
        return Check(name, "size", "pass", f"{c / 1e6:.3f} MB{change}; target '{target}' has no size budget", **figs)
    over = c / 1e6 > budget.max_size_mb
    return Check(name, "size", "fail" if over else "pass",
                 f"{c / 1e6:.3f} MB{change} (budget {budget.max_size_mb:.2f} MB)", **figs)


def _baseline_file(run: Path, art: dict) -> tuple[Path | None, str]:
    """The baseline artifact's file if it is still the baseline's, else None and why not."""
    if not art.get("file"):
        return None, "the baseline artifact has no file"
    path = run / art["file"]
    if not path.is_file():
        return None, f"baseline file {path} is not on disk"
    if art.get("sha256") and sha256_file(path) != art["sha256"]:
        return None, f"{path} changed since the baseline was recorded (sha256 differs)"
    return path, ""


def _candidate_file(run: Path, art: dict) -> tuple[Path | None, str]:
    if not art.get("file"):
        return None, "the candidate artifact has no file"
    path = run / art["file"]
    return (path, "") if path.is_file() else (None, f"candidate file {path} is not on disk")


def _threads(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def check_latency_interleaved(name: str, base_path: Path, cand_path: Path, backend: str, target: Target,
                              budget: Budget, rounds: int, burst: int, threads: int,
                              progress: Callable[[str], None] | None = None) -> Check:
    """Load both files in the backend's Runner and time them interleaved; UserError if that cannot be
    done here (engine missing, file unloadable, input shape unknown)."""
    mod = backends.require(backend)
    t0 = time.monotonic()
    b_run, c_run = mod.Runner(base_path, threads=threads), mod.Runner(cand_path, threads=threads)
    x = timing_input(c_run, target)
    if progress:
        progress(f"timing '{name}' interleaved with its baseline ({rounds} rounds x {burst} runs, "
                 f"{_threads(threads)})")
    res = time_interleaved(b_run, c_run, x, rounds, burst)
    limit = 1 + budget.max_latency_regression_pct / 100
    fail = res.ci95[0] > limit
    msg = (f"candidate/baseline {res.ratio:.3f}x (95% CI {res.ci95[0]:.3f}-{res.ci95[1]:.3f}; fails when the lower "
           f"bound exceeds {limit:.3f}); burst lower quartiles {res.candidate_ms:.3f} vs {res.baseline_ms:.3f} ms, "
           f"{len(res.ratios)} rounds x {res.burst} runs, {_threads(threads)}")
    return Check(name, "latency", "fail" if fail else "pass", msg, "interleaved", time.monotonic() - t0,
                 baseline=res.baseline_ms, candidate=res.candidate_ms, ratio=res.ratio)


def _ci(art: dict) -> tuple[float, float]:
    ci = art.get("latency_ci95_ms")
    p50 = art["latency_p50_ms"]
    return (float(ci[0]), float(ci[1])) if ci and len(ci) == 2 else (p50, p50)


def _host_key(report: dict) -> tuple | None:
    h = report.get("host")
    if not isinstance(h, dict) or not h.get("cpu"):
        return None
    return h.get("cpu"), h.get("cores"), h.get("machine")


def check_latency_stored(name: str, base: dict, cand: dict, budget: Budget, hosts_differ: str, why: str) -> Check:
    b, c = base["latency_p50_ms"], cand["latency_p50_ms"]
    if b is None or c is None:
        return Check(name, "latency", "skip", f"latency not measured here in the {_sides(b, c)}")
    if hosts_differ:
        return Check(name, "latency", "skip", f"{why}; stored figures come from different hosts ({hosts_differ}): "
                     "not comparable; give --baseline-run to time both here", "stored")
    b_hi, c_lo = _ci(base)[1], _ci(cand)[0]
    limit = b_hi * (1 + budget.max_latency_regression_pct / 100 + STORED_DRIFT_MARGIN)
    msg = (f"{why}; p50 {c:.3f} vs baseline {b:.3f} ms ({(c / b - 1) * 100:+.1f}%); fails when the candidate's CI "
           f"low {c_lo:.3f} ms exceeds baseline CI high x (1 + {budget.max_latency_regression_pct:g}% + "
           f"{STORED_DRIFT_MARGIN * 100:g}% drift margin) = {limit:.3f} ms")
    return Check(name, "latency", "fail" if c_lo > limit else "pass", msg, "stored", baseline=b, candidate=c,
                 ratio=c / b if b else None)


# ---------------------------------------------------------------- the gate
def gate(candidate_path: Path, baseline_path: Path, *, target: str | None = None,
         max_accuracy_drop: float | None = None, max_latency_regression_pct: float | None = None,
         max_size_mb: float | None = None, baseline_run: Path | None = None, rounds: int = DEFAULT_ROUNDS,
         burst: int = BURST, threads: int | None = None, device: bool = False, allow_no_latency: bool = False,
         progress: Callable[[str], None] | None = None) -> GateResult:
    """Compare `candidate_path` with `baseline_path` (both report.json); `rounds` 0 uses stored latencies only,
    `threads` None times with TIMING_THREADS; `device` compares only the figures measured on the device."""
    if rounds and rounds < MIN_ROUNDS:
        raise UserError(f"--interleaved-runs {rounds} is too few for a confidence interval",
                        f"use {MIN_ROUNDS} or more, or 0 to compare the stored figures")
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads}: at least 1 thread is needed", "pass --threads 1 or more")
    cand, base = load_report(candidate_path, "candidate"), load_report(baseline_path, "baseline")
    if cand.get("data") != base.get("data"):
        raise UserError(f"the baseline was measured on data '{base.get('data')}', the candidate on '{cand.get('data')}'",
                        "gate against a baseline made with the same data")
    metric = report_metric(cand)
    if report_metric(base) != metric:
        raise UserError(f"the baseline's metric is {report_metric(base).name}, the candidate's {metric.name}",
                        "gate against a baseline of the same task")
    t = resolve_target(cand, base, target)
    budget = budget_for(t, max_accuracy_drop, max_latency_regression_pct, max_size_mb, metric)
    threads = threads or TIMING_THREADS
    cand_run = run_folder(candidate_path, cand)
    base_run = run_folder(baseline_path, base, baseline_run)
    same_test_set = cand.get("test_samples") == base.get("test_samples")
    hk_b, hk_c = _host_key(base), _host_key(cand)
    hosts_differ = "" if hk_b is None or hk_c is None or hk_b == hk_c else f"{hk_b[0]} vs {hk_c[0]}"

    def mine(r: dict) -> dict[str, dict]:
        return {a["name"]: a for a in r["artifacts"] if a.get("target") in (None, t.name)}

    b_arts, c_arts = mine(base), mine(cand)
    if device:
        b_arts, c_arts = device_rows(base, t.name, "baseline"), device_rows(cand, t.name, "candidate")
    # The size budget holds what the target ships (its deliverable), not comparison artifacts.
    shipped = {x["deliverable"] for x in cand.get("targets", []) if x.get("name") == t.name and x.get("deliverable")}
    if device:       # the device's row of the deliverable is what the target ships, as measured there
        shipped |= {f"{n} (device)" for n in shipped}
    result = GateResult(Path(candidate_path), Path(baseline_path), t.name, budget, shipped=frozenset(shipped),
                        target_artifacts=frozenset(n for n, a in c_arts.items() if a.get("target") == t.name),
                        allow_no_latency=allow_no_latency, metric=metric)
    for name in [n for n in b_arts if n not in c_arts]:
        result.checks.append(Check(name, "presence", "skip", "in the baseline, missing from the candidate"))
    for name, c in c_arts.items():
        b = b_arts.get(name)
        if b is None:
            result.checks.append(Check(name, "presence", "skip", "new in the candidate: nothing to compare with"))
            continue
        result.checks.append(check_accuracy(name, b, c, budget, same_test_set, metric))
        result.checks.append(check_size(name, b, c, budget, t.name, shipped))
        result.checks.append(_latency(name, b, c, t, budget, base_run, cand_run, rounds, burst, threads,
                                      hosts_differ, progress))
    return result


def _latency(name: str, b: dict, c: dict, t: Target, budget: Budget, base_run: Path, cand_run: Path, rounds: int,
             burst: int, threads: int, hosts_differ: str, progress: Callable[[str], None] | None) -> Check:
    """Interleaved timing when both files are here and runnable, else the stored figures; figures
    measured on the device (merged device reports) are only ever compared as stored."""
    where = {b.get("latency_where"), c.get("latency_where")}
    if "device" in where:
        if where != {"device"}:
            return Check(name, "latency", "skip", "one figure was measured on the device, the other on a host: "
                         "not comparable", "stored")
        return check_latency_stored(name, b, c, budget, "", "device figures (timed on the device), compared as stored")
    if rounds == 0:
        return check_latency_stored(name, b, c, budget, hosts_differ, "stored figures only (--interleaved-runs 0)")
    bp, why_b = _baseline_file(base_run, b)
    cp, why_c = _candidate_file(cand_run, c)
    why = why_b or why_c
    if bp and cp:
        if os.path.samefile(bp, cp):
            why = f"baseline and candidate resolve to the same file {cp}"
        elif b["backend"] != c["backend"]:
            why = f"the backend changed ({b['backend']} -> {c['backend']})"
        else:
            try:
                return check_latency_interleaved(name, bp, cp, c["backend"], t, budget, rounds, burst, threads,
                                                 progress)
            except UserError as e:
                why = f"cannot time both here: {e.problem}"
    return check_latency_stored(name, b, c, budget, hosts_differ, f"no interleaved timing: {why}")
