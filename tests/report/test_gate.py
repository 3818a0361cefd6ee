"""The CI gate (pipeline/report/gate.py): passes on identical reports, fails (exit 1) on an accuracy
drop, a size over budget and a clearly slower candidate, never on stored-figure noise, and answers
usage errors with exit 2. Interleaved timing runs two real ONNX models in ONNX Runtime."""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.backends.onnxruntime import Runner, export_onnx
from pipeline.config import load_target
from pipeline.errors import UserError
from pipeline.report import gate, schema
from pipeline.hashing import sha256_file

INT8 = "jetson: INT8 QDQ ONNX (host proxy)"
ENGINE = "jetson: TensorRT engine"
HOST = {"cpu": "Test CPU", "cores": 2, "machine": "x86_64", "flags": [], "os": "Linux", "python": "3.11"}


def _net(width: int, layers: int) -> nn.Module:
    torch.manual_seed(0)
    mods: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU()]
    for _ in range(layers):
        mods += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*mods, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def _p50_ms(path: Path) -> float:
    r = Runner(path, threads=1)
    x = r.prepare(np.zeros((1, 1, 28, 28), np.float32))
    for _ in range(20):
        r.run_raw(x)
    ts = []
    for _ in range(100):
        t0 = time.perf_counter()
        r.run_raw(x)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """A 1-conv net and a much wider, deeper one, exported to ONNX; the wide one is verified >= 1.5x slower."""
    d = tmp_path_factory.mktemp("models")
    paths = {"small": d / "small.onnx", "wide": d / "wide.onnx"}
    export_onnx(_net(8, 0), torch.zeros(1, 1, 28, 28), paths["small"])
    export_onnx(_net(32, 2), torch.zeros(1, 1, 28, 28), paths["wide"])
    slow = _p50_ms(paths["wide"]) / _p50_ms(paths["small"])
    assert slow >= 1.5, f"the wide model is only {slow:.2f}x slower; the latency tests would prove nothing"
    return paths


def _artifact(name: str, stage: str, file: str | None, run: Path, *, target: str | None = None,
              backend: str = "onnxruntime", precision: str = "fp32", acc: float | None = 0.90,
              p50: float | None = 0.50) -> dict:
    size = (run / file).stat().st_size if file else None
    return {"name": name, "stage": stage, "backend": backend, "precision": precision, "target": target, "file": file,
            "accuracy": acc, "accuracy_delta": None if acc is None else acc - 0.91,
            "latency_p50_ms": p50, "latency_p90_ms": None if p50 is None else p50 * 1.1,
            "latency_ci95_ms": None if p50 is None else [p50 * 0.99, p50 * 1.01],
            "latency_where": None if p50 is None else "host", "size_bytes": size, "params": 1000, "macs": 10000,
            "selected": None, "note": "" if file else "to be built on device (no TensorRT here)"}


def make_run(run: Path, models: dict[str, Path], int8_model: str = "small") -> Path:
    """A run folder like the pipeline's: distill/, compile-jetson/ and report.json (schema 1.0)."""
    (run / "distill").mkdir(parents=True)
    (run / "compile-jetson").mkdir()
    shutil.copyfile(models["small"], run / "distill" / "model.onnx")
    shutil.copyfile(models[int8_model], run / "compile-jetson" / "model.int8.qdq.onnx")
    arts = [_artifact("distilled", "distill", "distill/model.onnx", run),
            _artifact(INT8, "compile-jetson", "compile-jetson/model.int8.qdq.onnx", run, target="jetson",
                      precision="int8", acc=0.895),
            _artifact(ENGINE, "compile-jetson", None, run, target="jetson", backend="tensorrt",
                      precision="int8+fp16", acc=None, p50=None)]
    for a in arts:
        a["latency"] = {"samples_ms": [0.5] * 5}  # bulky per-run data, as in stage records
    report = {"schema_version": schema.SCHEMA_VERSION, "created": "2025-01-01T00:00:00+00:00", "tool_version": "0.1.0",
              "target": "jetson", "model": "default", "data": "fashion-mnist", "teacher_accuracy": 0.91,
              "test_samples": 1000, "stages": {"distill": "ran", "report": "ran"}, "stage_wall_s": {"distill": 1.0},
              "artifacts": arts, "targets": [], "host": dict(HOST), "toolchain": {}}
    schema.validate(report)
    (run / "report.json").write_text(json.dumps(report, indent=2))
    return run / "report.json"


def edit(path: Path, fn) -> Path:
    """Apply fn to the report at path (in place) and return the path."""
    report = json.loads(path.read_text())
    fn(report)
    path.write_text(json.dumps(report))
    return path


def art(report: dict, name: str) -> dict:
    return next(a for a in report["artifacts"] if a["name"] == name)


@pytest.fixture
def pair(tmp_path, models) -> tuple[Path, Path]:
    """(baseline report, candidate report), identical content in two run folders."""
    return make_run(tmp_path / "base", models), make_run(tmp_path / "cand", models)


def junit_cases(path: Path) -> dict[tuple[str, str], str]:
    """{(artifact, check): 'pass' | 'fail' | 'skip'} from a JUnit file."""
    root = ET.parse(path).getroot()
    out = {}
    for case in root.iter("testcase"):
        status = "fail" if case.find("failure") is not None else "skip" if case.find("skipped") is not None else "pass"
        out[(case.get("classname"), case.get("name").split(" ")[0])] = status
    return out


# ---------------------------------------------------------------- pass
def test_identical_passes_interleaved(pair, run_cli, tmp_path):
    base, cand = pair
    junit = tmp_path / "out" / "junit.xml"
    r = run_cli("gate", str(cand), "--baseline", str(base), "--junit", str(junit))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"PASS latency  {INT8} [interleaved]" in r.stdout and "latency mode: interleaved" in r.stdout
    cases = junit_cases(junit)
    assert set(cases.values()) <= {"pass", "skip"}
    assert cases[(ENGINE, "latency")] == "skip" and cases[(INT8, "latency")] == "pass"
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "0" and int(root.get("tests")) == len(cases) == 9


def test_gate_against_itself_passes(pair):
    """The same report as baseline and candidate: the files are the same, so stored mode, and a pass."""
    base, _ = pair
    res = gate.gate(base, base, threads=1)
    assert res.exit_code == 0
    lat = [c for c in res.checks if c.kind == "latency" and c.status != "skip"]
    assert lat and all(c.mode == "stored" and "same file" in c.message for c in lat)


# ---------------------------------------------------------------- fail
def test_accuracy_drop_fails_with_junit_and_markdown(pair, run_cli, tmp_path):
    base, cand = pair
    edit(cand, lambda r: art(r, INT8).update(accuracy=0.880))  # 1.5 pt below the baseline, budget 1 pt
    junit, md = tmp_path / "j.xml", tmp_path / "s.md"
    r = run_cli("gate", str(cand), "--baseline", str(base), "--interleaved-runs", "0", "--junit", str(junit),
                "--markdown", str(md))
    assert r.returncode == 1, r.stdout + r.stderr
    cases = junit_cases(junit)
    assert [k for k, v in cases.items() if v == "fail"] == [(INT8, "accuracy")]
    failure = ET.parse(junit).getroot().find(".//failure")
    assert "-1.50 pt" in failure.get("message")
    assert "FAIL" in md.read_text() and INT8 in md.read_text()
    # A looser budget from the command line lets it pass.
    r = run_cli("gate", str(cand), "--baseline", str(base), "--interleaved-runs", "0", "--max-accuracy-drop", "0.02")
    assert r.returncode == 0, r.stdout + r.stderr


def test_size_over_budget_fails(pair):
    base, cand = pair
    edit(cand, lambda r: art(r, INT8).update(size_bytes=2_600_000))
    res = gate.gate(cand, base, rounds=0)
    assert [(c.artifact, c.kind) for c in res.failures] == [(INT8, "size")]
    assert res.exit_code == 1
    assert gate.gate(cand, base, rounds=0, max_size_mb=3.0).exit_code == 0
    # Budgets come from the target profile (jetson: 2 MB, x86-cpu: 4 MB); flags override them.
    assert gate.budget_for(load_target("jetson")).max_size_mb == 2.0
    assert gate.budget_for(load_target("x86-cpu")).max_size_mb == 4.0
    assert gate.budget_for(load_target("jetson"), max_size_mb=3.0).max_size_mb == 3.0


def test_size_growth_within_budget_passes_and_is_reported(pair):
    base, cand = pair
    grown = int(art(json.loads(base.read_text()), INT8)["size_bytes"] * 1.3)
    edit(cand, lambda r: art(r, INT8).update(size_bytes=grown))
    res = gate.gate(cand, base, rounds=0)
    size = next(c for c in res.checks if c.artifact == INT8 and c.kind == "size")
    assert res.exit_code == 0 and size.status == "pass" and "+30.0% vs baseline" in size.message


def test_clearly_slower_candidate_fails_interleaved(tmp_path, models, run_cli):
    base = make_run(tmp_path / "base", models)
    cand = make_run(tmp_path / "cand", models, int8_model="wide")
    # The stored figures claim nothing changed: only timing both here can see the slowdown.
    edit(cand, lambda r: art(r, INT8).update(size_bytes=art(json.loads(base.read_text()), INT8)["size_bytes"]))
    junit = tmp_path / "j.xml"
    r = run_cli("gate", str(cand), "--baseline", str(base), "--junit", str(junit))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"FAIL latency  {INT8} [interleaved]" in r.stdout
    assert [k for k, v in junit_cases(junit).items() if v == "fail"] == [(INT8, "latency")]


def test_time_interleaved_ratio(models):
    fast, slow = Runner(models["small"], threads=1), Runner(models["wide"], threads=1)
    x = np.zeros((1, 1, 28, 28), np.float32)
    res = gate.time_interleaved(fast, slow, x, rounds=10, burst=5)
    assert len(res.ratios) == 10 and res.ci95[0] <= res.ratio <= res.ci95[1]
    assert res.ci95[0] > 1.5
    with pytest.raises(UserError):
        gate.time_interleaved(fast, slow, x, rounds=3)


# ---------------------------------------------------------------- stored figures: noise is not a regression
def _stored(report: dict, p50: float, half_width: float) -> None:
    a = art(report, INT8)
    a.update(latency_p50_ms=p50, latency_ci95_ms=[p50 - half_width, p50 + half_width])


def test_stored_mode_noise_passes_and_real_slowdown_fails(pair):
    base, cand = pair
    edit(base, lambda r: _stored(r, 0.50, 0.03))
    edit(cand, lambda r: _stored(r, 0.58, 0.04))  # +16%, but within budget + CIs + drift margin
    res = gate.gate(cand, base, rounds=0)
    lat = next(c for c in res.checks if c.artifact == INT8 and c.kind == "latency")
    assert res.exit_code == 0 and lat.mode == "stored" and lat.status == "pass"
    edit(cand, lambda r: _stored(r, 0.90, 0.02))  # +80%, tight CIs
    res = gate.gate(cand, base, rounds=0)
    assert [(c.artifact, c.kind, c.mode) for c in res.failures] == [(INT8, "latency", "stored")]


def test_stored_mode_is_used_when_baseline_files_are_gone(pair):
    base, cand = pair
    shutil.rmtree(base.parent / "compile-jetson")
    res = gate.gate(cand, base, threads=1)
    lat = next(c for c in res.checks if c.artifact == INT8 and c.kind == "latency")
    assert lat.mode == "stored" and "not on disk" in lat.message and lat.status == "pass"


def test_other_host_skips_stored_latency(pair):
    base, cand = pair
    edit(base, lambda r: r["host"].update(cpu="Another CPU"))
    edit(cand, lambda r: _stored(r, 5.0, 0.01))  # 10x slower, but measured on another CPU
    res = gate.gate(cand, base, rounds=0)
    lat = next(c for c in res.checks if c.artifact == INT8 and c.kind == "latency")
    # Nothing timed is not a pass: exit 3 unless allowed, and then still said.
    assert res.exit_code == 3 and res.outcome == "no latency compared"
    assert lat.status == "skip" and "different hosts" in lat.message
    allowed = gate.gate(cand, base, rounds=0, allow_no_latency=True)
    assert allowed.exit_code == 0 and allowed.outcome == "pass (latency not compared)"


def test_device_figures_are_compared_as_stored(pair):
    """Rows carrying a merged device report's figure are never re-timed on the host."""
    base, cand = pair

    def on_device(p50: float):
        return lambda r: art(r, INT8).update(latency_where="device", latency_p50_ms=p50, latency_ci95_ms=None)

    edit(base, on_device(2.0))
    edit(cand, on_device(2.1))
    res = gate.gate(cand, base, threads=1)
    lat = next(c for c in res.checks if c.artifact == INT8 and c.kind == "latency")
    assert res.exit_code == 0 and lat.mode == "stored" and "timed on the device" in lat.message
    edit(cand, on_device(3.0))
    assert [(c.artifact, c.kind) for c in gate.gate(cand, base, threads=1).failures] == [(INT8, "latency")]


def test_different_test_sets_skip_accuracy(pair):
    base, cand = pair
    edit(cand, lambda r: (r.update(test_samples=500), art(r, INT8).update(accuracy=0.5)))
    res = gate.gate(cand, base, rounds=0)
    assert res.exit_code == 0
    assert all(c.status == "skip" for c in res.checks if c.kind == "accuracy")


# ---------------------------------------------------------------- baselines
def test_update_baseline_then_gate(pair, run_cli, tmp_path, models):
    _, cand = pair
    baseline = tmp_path / "reports" / "baselines" / "jetson.json"
    r = run_cli("gate", str(cand), "--baseline", str(baseline), "--update-baseline")
    assert r.returncode == 0, r.stdout + r.stderr
    written = json.loads(baseline.read_text())
    schema.validate(written)
    assert "samples_ms" not in baseline.read_text()
    assert (baseline.parent / written["run_dir"]).resolve() == cand.parent.resolve()
    assert art(written, INT8)["sha256"] == sha256_file(cand.parent / "compile-jetson" / "model.int8.qdq.onnx")
    # Gating the same run against it: the files are the candidate's own, so stored mode, and a pass.
    r = run_cli("gate", str(cand), "--baseline", str(baseline))
    assert r.returncode == 0 and "[stored]" in r.stdout and "same file" in r.stdout, r.stdout + r.stderr
    # A new candidate in another folder is timed against the baseline's files (found through run_dir).
    other = make_run(tmp_path / "other", models)
    res = gate.gate(other, baseline, threads=1)
    assert next(c for c in res.checks if c.artifact == INT8 and c.kind == "latency").mode == "interleaved"
    # Once the baseline's file is overwritten (sha256 differs), its stored figures are used instead.
    shutil.copyfile(models["wide"], cand.parent / "compile-jetson" / "model.int8.qdq.onnx")
    res = gate.gate(other, baseline, threads=1)
    lat = next(c for c in res.checks if c.artifact == INT8 and c.kind == "latency")
    assert lat.mode == "stored" and "sha256 differs" in lat.message


def test_baseline_run_option(pair, tmp_path, models):
    base, cand = pair
    lone = tmp_path / "lone" / "jetson.json"
    lone.parent.mkdir()
    shutil.copyfile(base, lone)  # a committed baseline: no artifact files beside it
    res = gate.gate(cand, lone, threads=1)
    assert next(c for c in res.checks if c.artifact == INT8 and c.kind == "latency").mode == "stored"
    res = gate.gate(cand, lone, baseline_run=base.parent, threads=1)
    assert next(c for c in res.checks if c.artifact == INT8 and c.kind == "latency").mode == "interleaved"


def test_report_inside_report_stage_folder_finds_run(pair):
    base, _ = pair
    stage = base.parent / "report"
    stage.mkdir()
    shutil.copyfile(base, stage / "report.json")
    (stage / "stage.json").write_text("{}")
    assert gate.run_folder(stage / "report.json", {}) == base.parent.resolve()


def test_artifacts_in_one_report_only_are_listed(pair):
    base, cand = pair
    edit(cand, lambda r: art(r, "distilled").update(name="distilled-v2"))
    res = gate.gate(cand, base, rounds=0)
    presence = {(c.artifact, c.message.split(":")[0]) for c in res.checks if c.kind == "presence"}
    assert presence == {("distilled", "in the baseline, missing from the candidate"),
                        ("distilled-v2", "new in the candidate")}
    assert res.exit_code == 0


# ---------------------------------------------------------------- usage errors: exit 2, one line
@pytest.mark.parametrize("case", ["no-candidate", "no-baseline", "not-json", "no-artifacts", "bad-type", "bad-target",
                                  "other-target", "negative-budget", "few-rounds", "bad-baseline-run", "other-data",
                                  "junit-is-a-folder"])
def test_usage_errors_exit_2(pair, run_cli, tmp_path, case):
    base, cand = pair
    args = [str(cand), "--baseline", str(base)]
    if case == "no-candidate":
        args[0] = str(tmp_path / "missing.json")
    elif case == "no-baseline":
        args[2] = str(tmp_path / "missing.json")
    elif case == "not-json":
        cand.write_text("{not json")
    elif case == "no-artifacts":
        edit(cand, lambda r: r.pop("artifacts"))
    elif case == "bad-type":
        edit(base, lambda r: art(r, INT8).update(latency_p50_ms="fast"))
    elif case == "bad-target":
        args += ["--target", "no-such-board"]
    elif case == "other-target":
        args += ["--target", "x86-cpu"]
    elif case == "negative-budget":
        args += ["--max-latency-regression-pct", "-5"]
    elif case == "few-rounds":
        args += ["--interleaved-runs", "2"]
    elif case == "bad-baseline-run":
        args += ["--baseline-run", str(tmp_path / "nowhere")]
    elif case == "other-data":
        edit(cand, lambda r: r.update(data="mnist"))
    elif case == "junit-is-a-folder":
        args += ["--interleaved-runs", "0", "--junit", str(tmp_path)]
    r = run_cli("gate", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and " -- fix: " in lines[0], r.stderr


def test_several_targets_need_target_flag(pair):
    base, cand = pair
    for p in (base, cand):
        edit(p, lambda r: r.update(target="jetson,x86-cpu"))
    with pytest.raises(UserError, match="covers targets jetson, x86-cpu") as e:
        gate.gate(cand, base, rounds=0)
    assert "--target" in e.value.fix
    res = gate.gate(cand, base, target="jetson", rounds=0)
    assert res.target == "jetson" and res.exit_code == 0


@pytest.mark.parametrize("version", [0, "9.9", "2.0", None, 1.0, "", "1.0.0.0"])
def test_unknown_schema_version_is_refused(tmp_path, version):
    """gate must not pass a report it cannot read correctly: an unknown schema_version is a usage error."""
    rep = json.loads((Path(__file__).resolve().parents[2] / "reports" / "baselines" / "jetson.json").read_text())
    rep["schema_version"] = version
    (tmp_path / "r.json").write_text(json.dumps(rep))
    with pytest.raises(UserError, match="schema_version"):
        gate.load_report(tmp_path / "r.json", "candidate")
    rep["schema_version"] = schema.SCHEMA_VERSION
    (tmp_path / "r.json").write_text(json.dumps(rep))
    gate.load_report(tmp_path / "r.json", "candidate")


def test_pr_markdown_leads_with_the_deliverable(pair, tmp_path):
    """The PR comment: verdict, then what the target ships with baseline / candidate / Δ, the intermediate
    models folded under <details>, and no absolute path of this machine."""
    from pipeline.report import gate_output
    base, cand = pair
    edit(cand, lambda r: r.update(targets=[{"name": "jetson", "deliverable": INT8}]))
    res = gate.gate(cand, base, rounds=0)
    md = gate_output.markdown(res)
    assert md.startswith("## edge-compress gate (jetson): ✅ PASS")
    lead, folded = md.split("<details>")
    assert f"### Deliverable: {INT8}" in lead and "| check | baseline | candidate | Δ | result | details |" in lead
    assert "| accuracy | 89.50% | 89.50% | +0.00 pt | ✅ pass |" in lead
    assert "distilled" not in lead and "| distilled | accuracy |" in folded and "</details>" in folded
    assert str(tmp_path) not in md and not re.search(r"(?<![\w.])/(tmp|home|root|work)/", md)
    edit(base, lambda r: r["host"].update(cpu="Another CPU"))
    md = gate_output.markdown(gate.gate(cand, base, rounds=0))
    assert "NO LATENCY COMPARED (not a pass)" in md.splitlines()[0] and "--allow-no-latency" in md
