"""pipeline/stages/compile.py through each engine's compile: what each target's folder holds."""
from __future__ import annotations

import json
import subprocess
import sys

from pipeline.backends import tensorrt as trt_backend


def metrics(run, stage):
    return json.loads((run / stage / "stage.json").read_text())["metrics"]


def test_tensorrt_compile_writes_the_device_half_as_real_files(small_run):
    m = metrics(small_run, "compile-jetson")
    d = small_run / "compile-jetson"
    assert m["compat_problems"] == [] and m["engine"]["status"] in ("to be built on device", "built")
    for name, src in trt_backend.device_files().items():
        assert (d / name).read_bytes() == src.read_bytes(), f"{name} is not the package's file"
        assert name in m["deliverables"]
    opts = json.loads((d / "build_engine.json").read_text())
    assert opts["target"]["tensorrt"] == "10.3" and opts["strongly_typed"] is False      # jetson: JetPack 6
    assert subprocess.run(["bash", "-n", str(d / "build_engine.sh")]).returncode == 0
    rows = {a["name"]: a for a in m["artifacts"]}
    proxy, engine = rows["jetson: INT8 QDQ ONNX (host proxy)"], rows["jetson: TensorRT engine"]
    assert proxy["backend"] == "onnxruntime" and proxy["host_proxy_of"] == "tensorrt"
    assert engine["device_engine"] and engine["runs_here"] == trt_backend.available()[0]


def test_the_bundle_script_runs_in_a_folder_of_its_own(small_run, tmp_path):
    """build_engine.py with only its bundle siblings (python -I: no repo on the path) parses its options."""
    import shutil
    shutil.copytree(small_run / "handoff" / "jetson", tmp_path / "bundle")
    r = subprocess.run([sys.executable, "-I", "build_engine.py", "--help"], cwd=tmp_path / "bundle",
                       capture_output=True, text=True)
    assert r.returncode == 0 and "--strongly-typed" in r.stdout, r.stderr


def test_tflite_compile_ships_int8_and_keeps_fp32_to_compare(small_run):
    m = metrics(small_run, "compile-android")
    assert m["precision"] in ("int8", "fp32") and m["layout"] == "NHWC"
    assert {a["precision"] for a in m["artifacts"]} == {"int8", "fp32"}
    assert all((small_run / "compile-android" / a["file"]).is_file() for a in m["artifacts"])
    assert m["deliverables"] == [next(a["file"] for a in m["artifacts"] if a["selected"])]
