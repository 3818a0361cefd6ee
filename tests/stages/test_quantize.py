"""pipeline/stages/quantize.py through the CLI, on a slice of real Fashion-MNIST and a small CNN
trained for 100 steps: calibration sets are verified before use, per-layer sensitivity is ranked and
stored, accuracy-aware fallback keeps layers in float to meet a budget, and the report names the set."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from pipeline.compress import calibration
from pipeline.backends import onnxruntime as ort_backend
from pipeline.config import load_target
from pipeline.data import resolve_data
from pipeline.report.schema import quantization_notes, target_summary
from pipeline.hashing import sha256_file

OUTLIER = 100.0  # a last-layer weight shared by all classes (see models_dir)


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, 1, 1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


@pytest.fixture(scope="module")
def models_dir(small_npz, tmp_path_factory, train_briefly) -> Path:
    """tiny.onnx: the CNN trained 100 steps; outlier.onnx: the same CNN with every class's weight on input
    feature 0 of the last layer set to OUTLIER. That shifts all logits equally (float accuracy barely
    moves), but each class's per-channel INT8 weight scale becomes OUTLIER / 127, which rounds its real
    weights to zero: INT8 breaks unless that layer stays float."""
    ds = resolve_data(str(small_npz), None, None)
    torch.manual_seed(0)
    model = tiny_cnn()
    x_tr, y_tr = torch.from_numpy(np.asarray(ds.normalize(ds.x_train))), torch.from_numpy(ds.y_train)
    train_briefly(model, x_tr, y_tr, one_thread=False)
    d = tmp_path_factory.mktemp("quantize-models")
    example = torch.from_numpy(np.asarray(ds.normalize(ds.x_test[:1])))
    ort_backend.export_onnx(model, example, d / "tiny.onnx")
    with torch.no_grad():
        model[7].weight[:, 0] = OUTLIER
    ort_backend.export_onnx(model, example, d / "outlier.onnx")
    calibration.build(ds, 128, 0, "small-128", out_dir=d)
    return d


@pytest.fixture(scope="module")
def int8_target(tmp_path_factory) -> Path:
    """x86-cpu with precision int8 (the stages under test need no precision choice)."""
    src = (Path(__file__).resolve().parents[2] / "targets" / "x86-cpu.toml").read_text()
    path = tmp_path_factory.mktemp("targets") / "cpu-int8.toml"
    path.write_text(src.replace('precision = "auto"', 'precision = "int8"'))
    return path


def run_quantize(run_cli, model: Path, data: Path, target: Path, out: Path, *sets: str):
    args = ["run", "--model", str(model), "--data", str(data), "--target", str(target), "--out", str(out),
            "--until", "quantize"]
    for s in sets:
        args += ["--set", s]
    return run_cli(*args)


def quant_record(out: Path) -> dict:
    return json.loads((out / "quantize-cpu-int8" / "stage.json").read_text())


def test_sensitivity_ranks_every_layer_and_is_stored(run_cli, small_npz, models_dir, int8_target, tmp_path):
    cal = models_dir / "small-128"
    r = run_quantize(run_cli, models_dir / "tiny.onnx", small_npz, int8_target, tmp_path / "run",
                     f"quantize.calibration={cal}", "quantize.sensitivity=true", "quantize.heldout_samples=300")
    assert r.returncode == 0, r.stderr[-2000:]
    m = quant_record(tmp_path / "run")["metrics"]
    sens = m["sensitivity"]
    layers = [n.name for n in onnx.load(str(models_dir / "tiny.onnx")).graph.node if n.op_type in ("Conv", "Gemm")]
    assert sorted(r["layer"] for r in sens["ranking"]) == sorted(layers)
    assert [r["rank"] for r in sens["ranking"]] == list(range(1, len(layers) + 1))
    gains = [r["gain"] for r in sens["ranking"]]
    assert gains == sorted(gains, reverse=True)
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["output_error"] >= 0 for r in sens["ranking"])
    assert m["heldout"]["samples"] == 300 and m["heldout"]["split"] == "train"
    assert m["calibration"]["name"] == "small-128"
    summary = target_summary(load_target(str(int8_target)), {"deliverables": []}, m, None, None)
    assert summary["calibration"]["name"] == "small-128" and summary["float_layers"] == []


def test_fallback_keeps_the_sensitive_layer_float_and_meets_a_loose_budget(run_cli, small_npz, models_dir,
                                                                           int8_target, tmp_path):
    cal = models_dir / "small-128"
    r = run_quantize(run_cli, models_dir / "outlier.onnx", small_npz, int8_target, tmp_path / "run",
                     f"quantize.calibration={cal}", "quantize.max_drop=0.02", "quantize.heldout_samples=300",
                     "quantize.max_float_layers=2")
    assert r.returncode == 0, r.stderr[-2000:]
    m = quant_record(tmp_path / "run")["metrics"]
    fb = m["fallback"]
    assert fb["int8_accuracy_drop"] > 0.02, "the outlier channel should break plain INT8"
    assert fb["met"] and m["budget_met"] and m["accuracy_drop_vs_float"] <= 0.02
    kept = [f["layer"] for f in m["float_layers"]]
    assert 1 <= len(kept) <= 2 and all("sensitivity rank" in f["reason"] for f in m["float_layers"])
    # the shipped model really has them in float: their weights are float initializers, not DequantizeLinear outputs
    assert m["engine_meta"]["excluded"] == kept
    shipped = onnx.load(str(tmp_path / "run" / "quantize-cpu-int8" / "model.int8.onnx"))
    float_inits = {i.name for i in shipped.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert all(n.input[1] in float_inits for n in shipped.graph.node if n.name in kept)
    summary = target_summary(load_target(str(int8_target)), {"deliverables": []}, m, None, None)
    assert summary["float_layers"] == kept and any(kept[0] in n for n in summary["notes"])


def _manifest_for(npy: Path, ds) -> None:
    x = np.load(npy)
    npy.with_suffix(".json").write_text(json.dumps({
        "name": npy.stem, "sha256": sha256_file(npy), "shape": list(x.shape), "dtype": str(x.dtype),
        "size": len(x), "seed": 0, "source": {"data": ds.name, "fingerprint": ds.fingerprint()}}))


@pytest.mark.parametrize("kind, message", [("empty", "is empty"), ("truncated", "does not match its manifest"),
                                           ("shape", "the model takes"), ("foreign", "was drawn from")])
def test_bad_calibration_set_is_refused_in_one_line(run_cli, small_npz, models_dir, int8_target, fmnist,
                                                    tmp_path, kind, message):
    ds = resolve_data(str(small_npz), None, None)
    npy = tmp_path / f"{kind}.npy"
    if kind == "empty":
        np.save(npy, np.zeros((0, 1, 28, 28), np.uint8))
        _manifest_for(npy, ds)
    elif kind == "truncated":
        calibration.build(ds, 64, 0, kind, out_dir=tmp_path)
        npy.write_bytes(npy.read_bytes()[:-100])
    elif kind == "shape":
        np.save(npy, np.zeros((16, 1, 32, 32), np.uint8))
        _manifest_for(npy, ds)
    else:
        calibration.build(fmnist, 64, 0, kind, out_dir=tmp_path)  # all of Fashion-MNIST, not this slice
    out = tmp_path / "run"
    r = run_quantize(run_cli, models_dir / "tiny.onnx", small_npz, int8_target, out,
                     f"quantize.calibration={tmp_path / kind}")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and kind in errors[0]
    assert not (out / "quantize-cpu-int8" / "stage.json").exists()


def test_report_notes_say_when_int8_is_not_faster_and_what_stayed_float(int8_target):
    target = load_target(str(int8_target))
    rows = [{"target": target.name, "backend": "onnxruntime", "precision": "int8", "latency_p50_ms": 0.07},
            {"target": target.name, "backend": "onnxruntime", "precision": "fp32", "latency_p50_ms": 0.05},
            {"target": None, "backend": "onnxruntime", "precision": "fp32", "latency_p50_ms": 0.01}]
    quant = {"method": "minmax", "calibration": {"name": "small-128", "sha256": "0" * 64, "size": 128, "seed": 0},
             "budget_met": False, "accuracy_drop_vs_float": 0.03, "budget": 0.01, "float_precision": "fp32",
             "float_layers": [{"layer": "/fc/Gemm", "reason": "sensitivity rank 1: ..."}],
             "fallback": {"float_layers": [{"layer": "/fc/Gemm", "reason": "sensitivity rank 1: ..."}]}}
    notes = target_summary(target, {"deliverables": []}, quant, None, None, rows)["notes"]
    assert any(n.startswith("INT8 is not faster here: onnxruntime INT8 p50 0.070 ms vs FP32 0.050 ms") for n in notes)
    assert any("kept in fp32: /fc/Gemm" in n for n in notes)
    assert any("budget cannot be met: drop 3.00 pt" in n for n in notes)
    rows[0]["latency_p50_ms"] = 0.03
    assert not any("not faster" in n for n in target_summary(target, {"deliverables": []}, quant, None, None,
                                                             rows)["notes"])


# ---------------------------------------------------------------- depthwise-safe PTQ (pipeline/dfq.py)
REPO = Path(__file__).resolve().parents[2]
DW_MODEL = f"{REPO}/pipeline/models/mobilenet.py:dw_separable"
DW_WEIGHTS = REPO / "pipeline" / "models" / "dw-separable" / "teacher.pt"
NO_PRUNE = ["prune.enabled=false", "evaluate.test_limit=500", "quantize.fallback=false"]


@pytest.fixture(scope="module")
def dw_loaded(run_cli, fmnist, tmp_path_factory, int8_target) -> Path:
    """The bundled depthwise-separable model, loaded (no pruning), on real Fashion-MNIST."""
    out = tmp_path_factory.mktemp("dw") / "base"
    r = run_cli("run", "--model", DW_MODEL, "--weights", str(DW_WEIGHTS), "--target", str(int8_target),
                "--out", str(out), "--until", "load", *[a for s in NO_PRUNE for a in ("--set", s)])
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def _dw_quantize(run_cli, base: Path, out: Path, target: Path, until: str, *sets: str) -> subprocess.CompletedProcess:
    shutil.copytree(base, out)
    args = ["run", "--model", DW_MODEL, "--weights", str(DW_WEIGHTS), "--target", str(target), "--out", str(out),
            "--until", until]
    return run_cli(*args, *[a for s in (*NO_PRUNE, *sets) for a in ("--set", s)])


def test_equalization_and_bias_correction_rescue_per_tensor_int8_on_a_depthwise_model(run_cli, dw_loaded,
                                                                                       int8_target, tmp_path):
    """Per-tensor INT8 weights break the depthwise model (one scale for channels ~100x apart); CLE + bias
    correction, applied by the quantize stage, bring the drop back within the 1 pt budget."""
    plain, fixed = tmp_path / "plain", tmp_path / "fixed"
    r = _dw_quantize(run_cli, dw_loaded, plain, int8_target, "quantize", "quantize.per_channel=false")
    # the miss is the run's outcome: exit 1 and one line (the stage's record is complete)
    assert r.returncode == 1 and "INT8 accuracy budget cannot be met" in r.stderr.strip().splitlines()[-1], \
        r.stderr[-2000:]
    r = _dw_quantize(run_cli, dw_loaded, fixed, int8_target, "quantize", "quantize.per_channel=false",
                     "quantize.equalize=true", "quantize.bias_correction=true")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = quant_record(plain)["metrics"], quant_record(fixed)["metrics"]
    assert a["accuracy_drop_vs_float"] > 0.015 and not a["budget_met"], a["accuracy_drop_vs_float"]
    assert b["accuracy_drop_vs_float"] <= 0.01 and b["budget_met"], b["accuracy_drop_vs_float"]
    assert a["depthwise_safe"] is None
    done = b["depthwise_safe"]
    assert len(done["equalize"]["pairs"]) >= 3 and done["bias_correction"]["layers"] >= 8
    assert done["float_max_abs_diff"] < 1.0          # CLE is exact; bias correction moves outputs a little
    spread = done["equalize"]["channel_range_spread"]
    assert max(v["before"] for v in spread.values()) > 10 * max(v["after"] for v in spread.values())
    # The shipped QDQ model really has one scale per weight tensor.
    model = onnx.load(str(fixed / "quantize-cpu-int8" / "model.int8.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and len(inits[n.input[0]].dims) == 4]
    assert weight_dq and all(len(inits[n.input[1]].dims) == 0 for n in weight_dq)
    notes = quantization_notes(b)
    assert any(n.startswith("cross-layer equalization before INT8") for n in notes)
    assert any(n.startswith("bias correction before INT8") for n in notes) and any("per-tensor" in n for n in notes)


def test_tflite_per_tensor_with_equalization_and_auto_precision(run_cli, dw_loaded, tmp_path):
    """TFLite: per-tensor weights + CLE through litert-torch's PT2E quantizer, then precision "auto"
    ships whichever of INT8 and FP32 measured faster here within the accuracy budget."""
    src = (REPO / "targets" / "android.toml").read_text()
    target = tmp_path / "phone-auto.toml"
    target.write_text(src.replace('precision = "int8"', 'precision = "auto"'))
    out = tmp_path / "tfl"
    # the loaded model is target-independent: reuse it under the new target's run folder
    r = _dw_quantize(run_cli, dw_loaded, out, target, "compile", "quantize.per_channel=false",
                     "quantize.equalize=true")
    assert r.returncode == 0, r.stderr[-2000:]
    q = json.loads((out / "quantize-phone-auto" / "stage.json").read_text())["metrics"]
    assert q["engine_meta"]["per_channel"] is False and "per-tensor" in q["engine_meta"]["weights"]
    assert q["accuracy_drop_vs_float"] <= 0.02 and q["depthwise_safe"]["equalize"]["pairs"]
    c = json.loads((out / "compile-phone-auto" / "stage.json").read_text())["metrics"]
    sel = c["selection"]
    assert set(sel) >= {"int8", "fp32", "reason"}
    int8_ok = sel["fp32"]["accuracy"] - sel["int8"]["accuracy"] <= 0.01
    faster = "int8" if int8_ok and sel["int8"]["p50_ms"] < sel["fp32"]["p50_ms"] else "fp32"
    assert c["precision"] == faster
    assert c["deliverables"] == [{"int8": "model.int8.tflite", "fp32": "model.fp32.tflite"}[faster]]


def test_a_budget_int8_cannot_meet_ends_the_run_with_exit_1_naming_layers_and_drop(run_cli, small_npz, models_dir,
                                                                                    int8_target, tmp_path):
    """Budget 0 on the outlier model with fallback off: no INT8 configuration can meet it. The run is not a
    success: exit 1, one line with the drop and the budget, no traceback; the record and the report note
    say the same."""
    cal = models_dir / "small-128"
    r = run_quantize(run_cli, models_dir / "outlier.onnx", small_npz, int8_target, tmp_path / "run",
                     f"quantize.calibration={cal}", "quantize.max_drop=0", "quantize.fallback=false",
                     "quantize.sensitivity=true", "quantize.heldout_samples=300")
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cpu-int8: INT8 accuracy budget cannot be met: drop ") and "> 0.00 pt" in last
    assert "most sensitive layers: " in last and "float_fallback" in last and "Traceback" not in r.stderr
    m = quant_record(tmp_path / "run")["metrics"]
    assert m["budget_met"] is False and m["accuracy_drop_vs_float"] > 0
    top = m["sensitivity"]["ranking"][0]["layer"]
    assert top in last and any(top in n for n in quantization_notes(m))


def test_float_fallback_target_ships_fp32_and_says_so(run_cli, small_npz, models_dir, int8_target, tmp_path):
    cal = models_dir / "small-128"
    target = tmp_path / "cpu-int8.toml"
    target.write_text(int8_target.read_text().replace('precision = "int8"', 'precision = "int8"\nfloat_fallback = true'))
    args = ["run", "--model", str(models_dir / "outlier.onnx"), "--data", str(small_npz), "--target", str(target),
            "--out", str(tmp_path / "run"), "--until", "compile"]
    for s in (f"quantize.calibration={cal}", "quantize.max_drop=0", "quantize.fallback=false",
              "quantize.heldout_samples=300"):
        args += ["--set", s]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    comp = json.loads((tmp_path / "run" / "compile-cpu-int8" / "stage.json").read_text())["metrics"]
    assert comp["precision"] == "fp32" and comp["selection"]["float_fallback"]
    assert "FP32 shipped" in r.stderr
    summary = target_summary(load_target(str(target)), comp, quant_record(tmp_path / "run")["metrics"], None, None)
    assert any(n.startswith("float fallback: ") for n in summary["notes"])
