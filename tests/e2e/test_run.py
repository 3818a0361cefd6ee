"""End to end on a small slice of real Fashion-MNIST: every stage for three targets, the report's
fixed core, the cache, the hand-off bundle, and reproducible bytes across two runs."""
from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGETS = "jetson,android,x86-cpu"
FAST = ["--set", "distill.epochs=1", "--set", "distill.train_limit=2000", "--set", "evaluate.runs=30",
        "--set", "evaluate.warmup=5", "--set", "load.latency_runs=10"]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def calib(small_npz, run_cli, tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    r = run_cli("calibrate", "--data", str(small_npz), "--size", "128", "--name", "small-128", "--out-dir", str(d))
    assert r.returncode == 0, r.stderr
    return str(d / "small-128")


@pytest.fixture(scope="module")
def runs(small_npz, calib, run_cli, tmp_path_factory):
    """Two cold runs of the same command into two folders, and a second (cached) run of the first."""
    base = tmp_path_factory.mktemp("e2e")
    out = {}
    for name in ("a", "b"):
        r = run_cli("run", "--target", TARGETS, "--data", str(small_npz), "--out", str(base / name),
                    "--set", f"quantize.calibration={calib}", *FAST)
        assert r.returncode == 0, r.stderr[-4000:]
        out[name] = base / name
    again = run_cli("run", "--target", TARGETS, "--data", str(small_npz), "--out", str(out["a"]),
                    "--set", f"quantize.calibration={calib}", *FAST)
    assert again.returncode == 0, again.stderr[-4000:]
    out["again"] = again
    return out


def test_report_core_and_every_stage(runs):
    d = runs["a"]
    report = json.loads((d / "report.json").read_text())
    assert report["target"] == TARGETS and report["created"]
    stages = ["load", "prune", "distill"] + [f"{s}-{t}" for t in TARGETS.split(",") for s in ("quantize", "compile")]
    for s in stages + ["evaluate", "handoff", "report"]:
        rec = json.loads((d / s / "stage.json").read_text())
        assert rec["status"] == "done" and rec["fingerprint"] and "wall_s" in rec
        for f, h in rec["outputs"].items():
            assert sha(d / s / f) == h, f"{s}/{f} does not match its recorded sha256"
    names = {a["name"]: a for a in report["artifacts"]}
    for a in report["artifacts"]:
        assert {"name", "stage", "backend", "accuracy", "latency_p50_ms", "size_bytes"} <= set(a)
        assert a["accuracy"] is None or 0 <= a["accuracy"] <= 1
    teacher = names["teacher"]
    assert teacher["accuracy"] > 0.85 and teacher["latency_p50_ms"] > 0
    engine = names["jetson: TensorRT engine"]
    assert engine["accuracy"] is None and engine["latency_p50_ms"] is None and "device" in engine["note"]
    # The TensorRT QDQ file keeps an fp16 body behind its Q/DQ pairs (TensorRT's fallback precision),
    # so it is about half the FP32 size; the full-integer files are about a quarter.
    for n, shrink in (("jetson: INT8 QDQ ONNX (host proxy)", 1.6), ("android: INT8 TFLite", 2.5),
                      ("x86-cpu: INT8 ONNX", 2.5)):
        assert names[n]["accuracy"] > names["distilled"]["accuracy"] - 0.05, n
        assert names[n]["size_bytes"] < names["distilled"]["size_bytes"] / shrink, n
    assert names["pruned"]["macs"] < 0.53 * teacher["macs"]
    jet = next(t for t in report["targets"] if t["name"] == "jetson")
    assert jet["engine"] == "to be built on device" and jet["measured"]["latency_p50_ms"] is None
    assert jet["budgets_met"]["latency"] is None
    assert (d / "report.md").read_text().count("|") > 50


def test_second_run_is_cached(runs):
    err = runs["again"].stderr
    for s in ("load", "prune", "distill", "quantize-jetson", "compile-android", "evaluate", "handoff"):
        assert f"[{s}] cached" in err, s
    report = json.loads((runs["a"] / "report.json").read_text())
    assert report["stages"]["distill"] == "cached"


def test_same_inputs_same_bytes(runs):
    a, b = runs["a"], runs["b"]
    files = ["load/model.onnx", "prune/model.onnx", "distill/model.onnx", "quantize-jetson/model.int8.qdq.onnx",
             "quantize-x86-cpu/model.int8.onnx", "quantize-android/model.int8.tflite",
             "compile-android/model.fp32.tflite", "compile-x86-cpu/model.fp32.onnx"]
    for f in files:
        assert sha(a / f) == sha(b / f), f"{f} differs between two identical runs"
    # Bundles: byte-identical, except where precision "auto" chose differently from measured
    # latencies, which the manifest records as the one field that differs ("precision").
    for t in TARGETS.split(","):
        ma, mb = (json.loads((r / "handoff" / t / "manifest.json").read_text()) for r in (a, b))
        if ma["precision"] != mb["precision"]:
            assert t == "x86-cpu", t
            continue
        for f in ma["files"]:
            assert sha(a / "handoff" / t / f) == sha(b / "handoff" / t / f), f"handoff/{t}/{f} differs"
        assert ma == mb, f"handoff/{t}/manifest.json differs"


def test_handoff_bundle(runs):
    d = runs["a"] / "handoff"
    with tarfile.open(d / "handoff.tar.gz") as tar:
        names = tar.getnames()
    for t in TARGETS.split(","):
        m = json.loads((d / t / "manifest.json").read_text())
        for f, h in m["files"].items():
            assert sha(d / t / f) == h
            assert f"handoff/{t}/{f}" in names
        # TFLite takes NHWC (what a phone's camera code produces); the manifest says which.
        nhwc = m["input"]["layout"] == "NHWC"
        assert m["input"]["shape"] == ([1, 28, 28, 1] if nhwc else [1, 1, 28, 28]) and nhwc == (t == "android")
        assert m["labels"][0] == "t-shirt/top"
        assert m["preprocessing"]["mean"] and m["calibration"]["sha256"] and m["toolchain"]["torch"]
        assert (d / t / "README.md").exists() and (d / t / "golden.npz").exists()
    assert {"build_engine.sh", "build_engine.py", "model.int8.qdq.onnx"} <= set(
        json.loads((d / "jetson" / "manifest.json").read_text())["files"])
    android = json.loads((d / "android" / "manifest.json").read_text())
    assert android["input"]["dtype"] == "int8" and android["input"]["quantization"]["scale"] > 0
    # No absolute path of the build machine anywhere in the bundle.
    for p in d.rglob("*"):
        if p.is_file() and p.suffix in (".json", ".md", ".sh", ".py", ".txt"):
            text = p.read_text()
            assert str(ROOT) not in text and "/tmp/" not in text and str(Path.home()) not in text, p
