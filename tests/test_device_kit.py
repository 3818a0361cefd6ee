"""The bundle runs on a device without this repository (issue 20.4, 22.2): one target folder copied to an
empty folder, run with a Python that has only numpy and the runtime; its eval slice, preprocessing as
code, model card and README; the ISA-aware INT8 settings."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from pipeline.bundle import preprocess
from pipeline.bundle.devicekit import cpu_isa, task_metrics
from pipeline.isa import host_mismatch_note, ort_int8_settings

TARGET = "android"      # the LiteRT bundle of the shared small run (tests/conftest.py)


@pytest.fixture(scope="module")
def alone(small_run, tmp_path_factory):
    """The android target folder, alone in an empty folder."""
    dest = tmp_path_factory.mktemp("device-folder") / TARGET
    shutil.copytree(small_run / "handoff" / TARGET, dest)
    return dest


def device(py, folder, *args, timeout=300):
    return subprocess.run([str(py), *args], cwd=folder, capture_output=True, text=True, timeout=timeout)


def test_device_python_has_only_numpy_and_the_runtime(device_py, tmp_path):
    r = device(device_py, tmp_path, "-c", "import numpy, onnxruntime, ai_edge_litert.interpreter; import torch")
    assert "No module named 'torch'" in r.stderr
    r = device(device_py, tmp_path, "-c", "import pipeline")
    assert "No module named 'pipeline'" in r.stderr


def test_bundle_verifies_and_benches_alone(alone, device_py):
    manifest = json.loads((alone / "manifest.json").read_text())
    r = device(device_py, alone, "run_on_device.py", "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"sha256 of {len(manifest['files'])} files match" in r.stdout and "ok   golden" in r.stdout
    r = device(device_py, alone, "run_on_device.py", "bench", "--runs", "20", "--warmup", "2", "--out", "dr.json")
    assert r.returncode == 0, r.stdout + r.stderr
    dr = json.loads((alone / "dr.json").read_text())
    ev = dr["eval"]
    assert ev["samples"] == manifest["eval"]["samples"] > 0
    assert ev["sha256"] == manifest["files"]["eval.npz"]
    # the same model, the same samples and the same preprocessing code: the device's figure is the host's
    assert ev["value"] == pytest.approx(manifest["eval"]["host_value"], abs=1.5 / ev["samples"])
    assert dr["latency_ms"]["where"] == "device" and dr["latency_ms"]["n"] == 20 and dr["latency_ms"]["p50"] > 0
    assert dr["artifact"]["matches_manifest"] and dr["isa"]["arch"]
    r = device(device_py, alone, "infer.py")
    assert r.returncode == 0 and r.stdout.startswith("class "), r.stdout + r.stderr


def test_a_changed_file_fails_verify(alone, device_py, tmp_path):
    broken = tmp_path / TARGET
    shutil.copytree(alone, broken)
    with open(broken / "eval.npz", "ab") as f:
        f.write(b"x")
    r = device(device_py, broken, "run_on_device.py", "verify")
    assert r.returncode == 1 and "FAIL sha256 mismatch: eval.npz" in r.stdout


def test_missing_runtime_is_one_line(alone, tmp_path):
    import sys
    env = tmp_path / "numpy-only"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    import numpy
    site = next((env / "lib").glob("python3*")) / "site-packages"
    (site / "kit").mkdir()
    (site / "kit" / "numpy").symlink_to(numpy.__path__[0])
    (site / "kit.pth").write_text(str(site / "kit") + "\n")
    r = device(env / "bin" / "python", alone, "run_on_device.py", "verify")
    assert r.returncode == 3
    assert r.stderr.strip().count("\n") == 0 and "needs its runtime" in r.stderr and "fix: pip install" in r.stderr


def test_bundle_documents_itself(alone):
    manifest = json.loads((alone / "manifest.json").read_text())
    readme = (alone / "README.md").read_text()
    first_command = next(line.strip() for line in readme.splitlines() if line.startswith("    "))
    assert first_command.startswith("python3 run_on_device.py"), first_command
    assert "## Budgets of this target" in readme and "preprocess.py" in readme
    card = (alone / "MODEL_CARD.md").read_text()
    for heading in ("Intended use", "Data", "Metrics", "Limitations", "Licence"):
        assert f"**{heading}.**" in card
    assert manifest["budgets"]["max_accuracy_drop"] is not None and manifest["isa"] == ["neon", "dotprod"]
    assert {"run_on_device.py", "preprocess.py", "devicekit.py", "hashing.py", "infer.py", "eval.npz"} <= set(manifest["files"])


def test_tensorrt_bundle_says_no_calibration_cache(small_run):
    readme = (small_run / "handoff" / "jetson" / "README.md").read_text()
    assert "no INT8 calibration cache" in readme
    assert (small_run / "handoff" / "jetson" / "infer.cpp").is_file()


def test_preprocess_is_the_pipelines_normalization(fmnist):
    x = fmnist.x_test[:8].single
    pre = {"input_chw": list(x.shape[1:]), "mean": fmnist.mean, "std": fmnist.std}
    want = fmnist.normalize(fmnist.x_test[:8]).single
    got = np.concatenate([preprocess.prepare(img[0], pre) for img in x])       # (H, W) uint8 frames
    np.testing.assert_array_equal(got, want)
    # a frame twice the size, BGR colour: resized, cropped, turned to luma, normalized to the same grid
    big = np.repeat(np.repeat(x[0, 0], 2, 0), 2, 1)
    bgr = np.stack([big] * 3, axis=-1)
    out = preprocess.prepare(bgr, pre, bgr=True)
    assert out.shape == want[:1].shape and np.abs(out - want[:1]).mean() < 0.1


def test_task_metrics_are_the_tasks():
    from pipeline.tasks import resolve
    rng = np.random.default_rng(0)
    out, y = rng.normal(size=(50, 10)).astype(np.float32), rng.integers(0, 10, 50)
    assert task_metrics("classification", out, y) == resolve("classification").evaluate(out, y)
    assert task_metrics("my.py:Plugin", out, y) is None


def test_isa_settings_follow_the_target():
    assert ort_int8_settings(["avx2"])["reduce_range"] is True
    assert ort_int8_settings(["avx2", "avx512", "avx512_vnni"])["reduce_range"] is False
    assert ort_int8_settings(["neon", "dotprod"])["reduce_range"] is False
    assert ort_int8_settings(["avx2"], enabled=False)["reduce_range"] is False
    amd = cpu_isa("flags\t: fpu sse2 avx2 fma\n")
    xeon = cpu_isa("flags\t: fpu avx2 avx512f avx512_vnni\n")
    assert amd["isa"] == ["avx2"] and not amd["int8_dot"] and xeon["int8_dot"]
    assert host_mismatch_note("x86-cpu", ["avx2"], amd) is None
    note = host_mismatch_note("x86-cpu", ["avx2", "avx512_vnni"], amd)
    assert "host figures" in note and "another ISA" in note
    assert "another ISA" in host_mismatch_note("rpi", ["neon", "dotprod"], amd)


def test_report_records_the_host_isa_and_says_when_it_is_another(small_run):
    from pipeline.isa import int8_behaviour
    report = json.loads((small_run / "report.json").read_text())
    host = cpu_isa()
    assert report["host"]["isa"] == host
    android = next(t for t in report["targets"] if t["name"] == TARGET)
    assert android["isa"]["target"] == ["neon", "dotprod"]
    other = int8_behaviour(host["isa"]) != "arm"
    assert any("another ISA" in n for n in android["notes"]) == other
    x86 = json.loads((small_run / "quantize-jetson" / "stage.json").read_text())["metrics"]["engine_meta"]
    assert "isa" not in x86        # TensorRT's QDQ ONNX is not an ONNX Runtime CPU build: no ISA settings
