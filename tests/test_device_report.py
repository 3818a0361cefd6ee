"""Device reports: `bench` on this machine for CPU bundles, its refusal for a TensorRT bundle without
TensorRT, the one schema shared with build_engine.py, and merging into a run's report with
`python -m pipeline report` (sha256 checked). The run is the one tests/test_verify.py builds."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import SMALL_RUN, TARGETS
from pipeline.backends import tensorrt as trt_backend
from pipeline.cli import main

# A hand-written report: its figures are made up for this test and say so; it is never product output.
TEST_LABEL = "TEST FIXTURE, hand-written in tests/test_device_report.py: not a measurement"


@pytest.fixture(scope="module")
def run_dir(small_run) -> Path:
    return small_run


def hand_written(run: Path, target: str, p50: float) -> dict:
    manifest = json.loads((run / "handoff" / target / "manifest.json").read_text())
    art = manifest["deliverable"]
    sha = manifest["files"][art]
    return {
        "device_report_version": 1, "written_by": TEST_LABEL, "created": "2026-01-01T00:00:00+00:00",
        "target": target, "backend": manifest["backend"],
        "device": {"name": TEST_LABEL, "source": None},
        "runtime": {"name": "tensorrt", "version": "10.3.0", "expected": manifest["device_toolchain"],
                    "version_match": True, "cuda_binding": "torch.cuda"},
        "tensorrt": "10.3.0",
        "artifact": {"file": art, "sha256": sha, "manifest_sha256": sha, "matches_manifest": True},
        "engine": {"file": "model.plan", "sha256": "0" * 64, "built_here": True},
        "build": None, "layer_precisions": {"int8": 20, "fp16": 2},
        "check": {"n": 16, "max_abs_err": 0.01, "mean_abs_err": 0.001, "atol": 0.25, "rtol": 0.0,
                  "within_tolerance": True, "top1_agreement": 1.0, "min_top1_agreement": 0.9,
                  "accuracy_on_golden": 0.5, "passed": True},
        "latency_ms": {"n": 1000, "p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3, "mean": p50, "min": p50 * 0.9,
                       "max": p50 * 2, "warmup": 50, "batch": 1, "where": "device", "what": TEST_LABEL},
        "isa": None, "eval": None,     # this hand-written report measured no eval slice
    }


def merge(capsys, run: Path, *reports: Path) -> tuple[int, str, str]:
    rc = main(["report", str(run), *[a for r in reports for a in ("--device-report", str(r))]])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_merge_sets_the_device_figures(run_copy, tmp_path, capsys):
    budget = next(t for t in json.loads((run_copy / "report.json").read_text())["targets"]
                  if t["name"] == "jetson")["budgets"]["latency_ms"]
    p50 = round(budget / 2, 4)
    f = tmp_path / "device_report.json"
    f.write_text(json.dumps(hand_written(run_copy, "jetson", p50)))
    rc, out, err = merge(capsys, run_copy, f)
    assert rc == 0, err
    assert "jetson device p50" in out
    report = json.loads((run_copy / "report.json").read_text())
    jet = next(t for t in report["targets"] if t["name"] == "jetson")
    assert jet["measured"]["latency_p50_ms"] == p50 and jet["budgets_met"]["latency"] is True
    assert jet["device_measurement"]["device"] == TEST_LABEL and jet["device_measurement"]["accuracy_on_golden"] == 0.5
    engine = next(a for a in report["artifacts"] if a["name"] == "jetson: TensorRT engine")
    assert engine["latency_where"] == "device" and engine["latency_p50_ms"] == p50 and engine["accuracy"] is None
    assert any(n.startswith("device report:") and "golden" in n for n in jet["notes"])
    assert f"{p50:.3f}" in (run_copy / "report.md").read_text()
    assert TEST_LABEL in (run_copy / "report.html").read_text()


def test_merge_refuses_a_sha256_mismatch(run_copy, tmp_path, capsys):
    before = (run_copy / "report.json").read_text()
    dr = hand_written(run_copy, "jetson", 1.0)
    dr["artifact"]["sha256"] = "f" * 64
    f = tmp_path / "other.json"
    f.write_text(json.dumps(dr))
    rc, _, err = merge(capsys, run_copy, f)
    assert rc == 2 and "sha256" in err and "refusing" in err, err
    assert (run_copy / "report.json").read_text() == before


def test_bench_cpu_bundle_writes_the_shared_schema_and_merges(run_dir, run_copy, tmp_path, capsys):
    out = tmp_path / "android.json"
    rc = main(["bench", "--bundle", str(run_copy / "handoff"), "--target", "android", "--out", str(out),
               "--runs", "20", "--warmup", "2"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    dr = json.loads(out.read_text())
    assert set(dr) == set(hand_written(run_copy, "jetson", 1.0))
    assert dr["target"] == "android" and dr["runtime"]["name"] == "tflite"
    assert dr["artifact"]["matches_manifest"] and dr["check"]["passed"] and dr["check"]["n"] == 16
    lat = dr["latency_ms"]
    assert lat["where"] == "device" and lat["n"] == 20 and 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    # The bundle's standalone build_engine.py writes its report with the same code: the very files, copied.
    from pipeline.bundle import build_engine, devicekit
    for mod in (build_engine, devicekit):
        assert (run_dir / "handoff" / "jetson" / Path(mod.__file__).name).read_bytes() == Path(mod.__file__).read_bytes()
    rc, _, err = merge(capsys, run_copy, out)
    assert rc == 0, err
    report = json.loads((run_copy / "report.json").read_text())
    row = next(a for a in report["artifacts"] if a["name"] == "android: INT8 TFLite (device)")
    assert row["latency_where"] == "device" and row["latency_p50_ms"] == lat["p50"]
    assert next(t for t in report["targets"] if t["name"] == "android")["measured"]["latency_p50_ms"] == lat["p50"]
    host = next(a for a in report["artifacts"] if a["name"] == "android: INT8 TFLite")
    assert host["latency_where"] == "host"


@pytest.mark.skipif(trt_backend.available()[0], reason="TensorRT and a GPU are present here")
def test_bench_tensorrt_bundle_without_tensorrt_is_one_clear_line(run_dir, tmp_path, capsys):
    rc = main(["bench", "--bundle", str(run_dir / "handoff"), "--target", "jetson", "--out", str(tmp_path / "j.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "TensorRT" in err and "device" in err, err
    assert not (tmp_path / "j.json").exists() and not (run_dir / "handoff" / "jetson" / "model.plan").exists()


def test_merged_device_reports_survive_a_rerun_of_the_run(run_dir, small_npz, run_cli, tmp_path, capsys):
    """A later `run` rewrites report.json; the device measurements merged into it before are merged again,
    and one that measured an artifact the run no longer ships is left out with a line saying why."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("*.tar.gz"))
    shutil.copyfile(run_dir / "handoff" / "handoff.tar.gz", run / "handoff" / "handoff.tar.gz")
    f = tmp_path / "device_report.json"
    f.write_text(json.dumps(hand_written(run, "jetson", 0.5)))
    rc, _, err = merge(capsys, run, f)
    assert rc == 0, err
    assert json.loads((run / "device-reports" / "jetson.json").read_text())["latency_ms"]["p50"] == 0.5

    calib = run_dir.parent / "calib" / "small-128"
    args = ["run", "--target", TARGETS, "--data", str(small_npz), "--out", str(run),
            "--set", f"quantize.calibration={calib}", *SMALL_RUN]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    jet = next(t for t in json.loads((run / "report.json").read_text())["targets"] if t["name"] == "jetson")
    assert jet["measured"]["latency_p50_ms"] == 0.5 and jet["device_measurement"]["device"] == TEST_LABEL

    stale = hand_written(run, "jetson", 0.5)
    stale["artifact"]["sha256"] = "f" * 64
    (run / "device-reports" / "jetson.json").write_text(json.dumps(stale))
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "not merged" in r.stderr and "bench the new bundle" in r.stderr
    jet = next(t for t in json.loads((run / "report.json").read_text())["targets"] if t["name"] == "jetson")
    assert jet["measured"]["latency_p50_ms"] is None
