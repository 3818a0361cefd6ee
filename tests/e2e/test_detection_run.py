"""`run --task detection` end to end on the bundled detector and data (short settings), the bundle verified by
its boxes, and the refusals a detector user meets."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT

SHORT = ["--set", "evaluate.test_limit=60", "--set", "distill.train_limit=300", "--set", "distill.epochs=0.3",
         "--set", "evaluate.runs=10", "--set", "evaluate.warmup=2", "--set", "load.latency_runs=5",
         "--set", "quantize.heldout_samples=100", "--set", "handoff.eval_samples=20"]


def _run(*args, timeout=1500):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_default_detection_run_end_to_end(tmp_path):
    out = tmp_path / "det"
    r = _run("run", "--task", "detection", "--target", "x86-cpu,android", "--out", str(out), *SHORT)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["task"]["name"] == "detection" and report["metric"]["name"] == "map"
    assert report["data"] == "fashion-detect"
    rows = {a["name"]: a for a in report["artifacts"]}
    teacher = rows["teacher"]
    assert teacher["accuracy"] > 0.4 and teacher["metrics"]["map50"] > teacher["accuracy"]   # first 60 test images
    assert len(teacher["per_class_ap"]) == 10 and len(teacher["examples"]) == 4
    lat = teacher["pipeline_latency"]
    assert all(lat[f"{k}_p50_ms"] > 0 for k in ("preprocess", "inference", "postprocess", "end_to_end"))
    md = (out / "report.md").read_text()
    assert "## Detection" in md and "Per-class AP" in md and "decode + NMS" in md and "detections.png" in md
    assert (out / "detections.png").stat().st_size > 1000
    assert "data:image/png;base64," in (out / "report.html").read_text()

    prune = json.loads((out / "prune" / "stage.json").read_text())["metrics"]
    heads = {f"head.{b}.{i}.1" for b in ("box", "cls") for i in range(3)}
    assert heads <= set(prune["ignored_layers"])           # every level's class and box rows kept

    for target in ("x86-cpu", "android"):
        man = json.loads((out / "handoff" / target / "manifest.json").read_text())
        det = man["detection"]
        assert det["output_layout"] == "xywh-scores" and det["strides"] == [8, 16, 32]
        assert det["classes"][0] == "t-shirt/top" and det["letterbox"]["size"] == [96, 96]
        assert man["output"]["shape"] == [1, 14, 189]
        assert (out / "handoff" / target / "postprocess.py").is_file()
        with np.load(out / "handoff" / target / "golden.npz") as g:
            assert g["boxes"].shape[0] == 16 and g["boxes"].shape[2] == 6
    v = _run("verify", str(out / "handoff"), "--runs", "5", timeout=600)
    assert v.returncode == 0, v.stdout[-2000:] + v.stderr[-2000:]
    assert "golden boxes found again" in v.stdout


def test_detection_refusals(tmp_path):
    r = _run("run", "--task", "detection", "--set", "detection.output_layout=xywh-obj-scores", "--target", "x86-cpu",
             "--out", str(tmp_path / "a"), "--until", "load", timeout=600)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "detection.output_layout=xywh-obj-scores does not fit" in last, r.stderr[-2000:]
    r = _run("run", "--task", "detection", "--model", "default", "--data", "fashion-mnist", "--target", "x86-cpu",
             "--out", str(tmp_path / "b"), "--until", "load", timeout=600)
    assert r.returncode == 2 and "detection wants (N, 4 + classes, anchors)" in r.stderr.strip().splitlines()[-1], \
        r.stderr[-2000:]
    r = _run("run", "--task", "classification", "--model", "detect-default", "--data", "fashion-detect",
             "--target", "x86-cpu", "--out", str(tmp_path / "c"), "--until", "load", timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
