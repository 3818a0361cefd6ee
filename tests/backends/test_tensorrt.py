"""pipeline/backends/tensorrt/ on a host without TensorRT: the clear "not here" errors, the static
compatibility check on hand-built graphs that break each rule, modelopt QDQ quantization (run in
ONNX Runtime as the host proxy) of a small CNN trained in the fixture, and the device bundle scripts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from pipeline.backends import onnxruntime as ort_backend
from pipeline.backends import tensorrt as trt_backend
from pipeline.errors import UserError

TRT_HERE = trt_backend.available()[0]


# ---------------------------------------------------------------- hand-built graphs
def qdq_conv(path: Path, *, zp_dtype=np.int8, zp_value: int = 0, w_axis: int = 0, act_op: str = "Relu",
             in_dims=(1, 4, 8, 8), opset: int = 17, act_zero_point: bool = True, act_per_channel: bool = False) -> Path:
    """input -> Q -> DQ -> Conv(weight: int8 DQ, per channel) -> act_op -> output, written to path."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (4, 4, 3, 3)).astype(np.int8)
    act_scale = np.full((4,), 0.02, np.float32) if act_per_channel else np.array(0.02, np.float32)
    act_zp = np.full(act_scale.shape, zp_value, zp_dtype)
    inits = [numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.full((4,), 0.01, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"), numpy_helper.from_array(act_scale, "x_scale")]
    q_in, dq_in = ["input", "x_scale"], ["x_q", "x_scale"]
    if act_zero_point:
        inits.append(numpy_helper.from_array(act_zp, "x_zp"))
        q_in.append("x_zp")
        dq_in.append("x_zp")
    act_axis = {"axis": 1} if act_per_channel else {}
    nodes = [
        helper.make_node("QuantizeLinear", q_in, ["x_q"], name="in_Q", **act_axis),
        helper.make_node("DequantizeLinear", dq_in, ["x_dq"], name="in_DQ", **act_axis),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="w_DQ", axis=w_axis),
        helper.make_node("Conv", ["x_dq", "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(act_op, ["conv"], ["logits"], name="act"),
    ]
    out_dims = (in_dims[0], 4, *in_dims[2:])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(in_dims))],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(out_dims))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def hann_window(path: Path) -> Path:
    """Constant size -> HannWindow (an op TensorRT's parser gained in 10.4)."""
    nodes = [helper.make_node("Constant", [], ["size"], name="size", value=numpy_helper.from_array(np.array(8, np.int64))),
             helper.make_node("HannWindow", ["size"], ["logits"], name="hann")]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def rules(problems: list[dict]) -> set[tuple[str, str]]:
    assert all(set(p) == {"node", "op", "rule", "message"} and p["message"] for p in problems)
    return {(p["rule"], p["node"]) for p in problems}


def test_check_compat_clean_graph(tmp_path):
    assert trt_backend.check_compat(qdq_conv(tmp_path / "ok.onnx")) == []


def test_check_compat_unsupported_op(tmp_path):
    assert rules(trt_backend.check_compat(qdq_conv(tmp_path / "m.onnx", act_op="Det"), "10.3")) == {
        ("unsupported-op", "act")}
    hann = hann_window(tmp_path / "hann.onnx")
    [p] = trt_backend.check_compat(hann, "10.3")
    assert p["rule"] == "unsupported-op" and p["op"] == "HannWindow" and "10.4" in p["message"]
    assert trt_backend.check_compat(hann, "10.4") == []


def test_check_compat_nonzero_zero_point(tmp_path):
    assert rules(trt_backend.check_compat(qdq_conv(tmp_path / "m.onnx", zp_value=3))) == {
        ("qdq-zero-point", "in_Q"), ("qdq-zero-point", "in_DQ")}


def test_check_compat_uint8_zero_point(tmp_path):
    problems = trt_backend.check_compat(qdq_conv(tmp_path / "m.onnx", zp_dtype=np.uint8))
    assert rules(problems) == {("qdq-type", "in_Q"), ("qdq-type", "in_DQ")}
    assert "uint8" in problems[0]["message"]


def test_check_compat_quantize_without_zero_point_is_uint8(tmp_path):
    assert ("qdq-type", "in_Q") in rules(trt_backend.check_compat(qdq_conv(tmp_path / "m.onnx", act_zero_point=False)))


def test_check_compat_wrong_per_channel_axis(tmp_path):
    [p] = trt_backend.check_compat(qdq_conv(tmp_path / "m.onnx", w_axis=1))
    assert (p["rule"], p["node"], p["op"]) == ("qdq-axis", "w_DQ", "DequantizeLinear")
    assert "axis 1" in p["message"] and "axis 0" in p["message"]


def test_check_compat_per_channel_activation(tmp_path):
    assert rules(trt_backend.check_compat(qdq_conv(tmp_path / "m.onnx", act_per_channel=True))) == {
        ("qdq-per-channel-activation", "in_Q"), ("qdq-per-channel-activation", "in_DQ")}


def test_check_compat_dynamic_dims(tmp_path):
    non_batch = qdq_conv(tmp_path / "h.onnx", in_dims=(1, 4, "h", 8))
    for dynamic_batch in (False, True):
        assert ("dynamic-shape", "input") in rules(trt_backend.check_compat(non_batch, dynamic_batch=dynamic_batch))
    batch = qdq_conv(tmp_path / "n.onnx", in_dims=("N", 4, 8, 8))
    assert rules(trt_backend.check_compat(batch)) == {("dynamic-shape", "input"), ("dynamic-shape", "logits")}
    assert trt_backend.check_compat(batch, dynamic_batch=True) == []
    static = qdq_conv(tmp_path / "s.onnx")
    assert rules(trt_backend.check_compat(static, dynamic_batch=True)) == {("static-batch", "input")}


def test_check_compat_opset_and_versions(tmp_path):
    m = qdq_conv(tmp_path / "o21.onnx", opset=21)
    assert rules(trt_backend.check_compat(m, "10.3")) == {("opset", "")}
    assert trt_backend.check_compat(m, "10.15") == []
    assert trt_backend.check_compat(m, "11.1") == []          # TensorRT 11: strongly typed, same parser table
    for bad in ("8.6", "12.0", "latest"):
        with pytest.raises(UserError, match="TensorRT"):
            trt_backend.check_compat(m, bad)


# ---------------------------------------------------------------- modelopt QDQ of a trained model
@pytest.fixture(scope="module")
def trained(fmnist, tmp_path_factory, train_briefly) -> dict:
    """A 2-layer CNN trained 100 steps on real data, its FP32 ONNX, and a TensorRT-style QDQ of it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, 1, 1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 7 * 7, 10))
    x_tr, y_tr = torch.from_numpy(np.asarray(fmnist.normalize(fmnist.x_train[:6400]))), torch.from_numpy(fmnist.y_train[:6400])
    train_briefly(model, x_tr, y_tr)
    d = tmp_path_factory.mktemp("trt")
    x = np.asarray(fmnist.normalize(fmnist.x_test[:256]))
    ort_backend.export_onnx(model, torch.from_numpy(x[:1]), d / "fp32.onnx")
    calib = np.asarray(fmnist.normalize(fmnist.x_train[-256:]))
    meta = trt_backend.quantize_int8(d / "fp32.onnx", calib, d / "qdq.onnx")
    return {"dir": d, "onnx": d / "fp32.onnx", "qdq": d / "qdq.onnx", "meta": meta, "x": x, "model": model,
            "y": fmnist.y_test[:256], "calib": calib}


def qdq_facts(path: Path) -> tuple[list[np.ndarray], dict[str, int]]:
    """Zero points of all Q/DQ, and the axis of each Conv's weight DequantizeLinear (read from the graph)."""
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    zps = [inits[n.input[2]] for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    axes = {}
    for conv in (n for n in m.graph.node if n.op_type == "Conv"):
        dq = producers.get(conv.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear":
            assert inits[dq.input[1]].size == conv_out_channels(conv, inits, producers)
            axes[conv.name] = next(a.i for a in dq.attribute if a.name == "axis")
    return zps, axes


def conv_out_channels(conv: onnx.NodeProto, inits: dict, producers: dict) -> int:
    """Output channels of a Conv from its weight constant (behind DQ, or Q -> DQ)."""
    dq = producers[conv.input[1]]
    src = dq.input[0] if dq.input[0] in inits else producers[dq.input[0]].input[0]
    return inits[src].shape[0]


def agreement_and_drop(trained: dict, path: Path) -> tuple[float, float]:
    fp32 = ort_backend.Runner(trained["onnx"]).run(trained["x"])
    q = ort_backend.Runner(path).run(trained["x"])
    acc = lambda out: float((out.argmax(1) == trained["y"]).mean())  # noqa: E731
    assert acc(fp32) > 0.7, "the fixture model must have learned something"
    return float((q.argmax(1) == fp32.argmax(1)).mean()), acc(fp32) - acc(q)


def test_quantize_int8_modelopt_qdq(trained):
    meta, qdq = trained["meta"], trained["qdq"]
    assert meta["method"] == "entropy" and meta["modelopt_method"] == "entropy"
    assert meta["high_precision_dtype"] == "fp16" and meta["fp16_note"] == "fp16 graph runs in ONNX Runtime CPU"
    assert meta["zero_point_dtypes"] == ["int8"] and meta["zero_points_all_zero"] and meta["n_missing_zero_points"] == 0
    assert meta["per_channel_weight_axes"] == {"Conv:0": 2}
    assert meta["n_quantize_linear"] == meta["n_dequantize_linear"] > 0 and meta["compat_check"] == {"tensorrt": "10.3", "problems": []}
    assert meta["input"] == {"name": "input", "shape": [1, 1, 28, 28], "dtype": "float32"}
    zps, axes = qdq_facts(qdq)
    assert zps and all(z.dtype == np.int8 and not np.any(z) for z in zps)
    assert len(axes) == 2 and set(axes.values()) == {0}
    assert "Cast" in {n.op_type for n in onnx.load(str(qdq)).graph.node}, "fp16 body behind float32 I/O"
    assert trt_backend.check_compat(qdq, "10.3") == []
    agreement, drop = agreement_and_drop(trained, qdq)
    assert agreement >= 0.96 and drop <= 0.02, (agreement, drop)


def test_quantize_int8_minmax_fp32_with_excluded_node(trained):
    first_conv = next(n.name for n in onnx.load(str(trained["onnx"])).graph.node if n.op_type == "Conv")
    out = trained["dir"] / "qdq-minmax.onnx"
    meta = trt_backend.quantize_int8(trained["onnx"], trained["calib"], out, method="minmax",
                                     exclude_nodes=[first_conv], fp16_fallback=False)
    assert meta["modelopt_method"] == "max" and meta["high_precision_dtype"] == "fp32"
    assert meta["excluded"] == [first_conv] and first_conv in meta["float_layers"]
    m = onnx.load(str(out))
    assert "Cast" not in {n.op_type for n in m.graph.node}
    assert all(i.data_type != TensorProto.FLOAT16 for i in m.graph.initializer)
    _, axes = qdq_facts(out)
    assert first_conv not in axes and set(axes.values()) == {0}
    assert trt_backend.check_compat(out) == []
    agreement, drop = agreement_and_drop(trained, out)
    assert agreement >= 0.96 and drop <= 0.02, (agreement, drop)


def test_quantize_int8_user_errors(trained, tmp_path):
    with pytest.raises(UserError, match="only max and entropy"):
        trt_backend.quantize_int8(trained["onnx"], trained["calib"], tmp_path / "q.onnx", method="percentile")
    with pytest.raises(UserError, match="empty"):
        trt_backend.quantize_int8(trained["onnx"], trained["calib"][:0], tmp_path / "q.onnx")
    with pytest.raises(UserError, match="not found in the graph"):
        trt_backend.quantize_int8(trained["onnx"], trained["calib"], tmp_path / "q.onnx", exclude_nodes=["nope"])


def test_onnxruntime_flavour_qdq_is_not_tensorrt_compatible(trained):
    """The CPU QDQ (uint8 activations with zero points, int32 bias) must be caught by the check."""
    out = trained["dir"] / "ort-int8.onnx"
    ort_backend.quantize_int8(trained["onnx"], trained["calib"], out)
    found = {p["rule"] for p in trt_backend.check_compat(out)}
    assert {"qdq-type", "qdq-zero-point"} <= found


# ---------------------------------------------------------------- no TensorRT here
def test_available_gives_a_reason():
    ok, reason = trt_backend.available()
    assert isinstance(ok, bool) and reason
    if not ok:
        assert "tensorrt" in reason.lower()


@pytest.mark.skipif(TRT_HERE, reason="TensorRT and a GPU are present")
def test_build_and_run_say_tensorrt_is_missing(tmp_path):
    qdq = qdq_conv(tmp_path / "m.onnx")
    with pytest.raises(UserError, match="TensorRT") as e:
        trt_backend.build_engine(qdq, tmp_path / "m.plan")
    assert "device" in e.value.fix
    assert not (tmp_path / "m.plan").exists()
    with pytest.raises(UserError, match="TensorRT"):
        trt_backend.Runner(tmp_path / "m.plan")


# ---------------------------------------------------------------- device bundle
@pytest.mark.parametrize("opts", [
    {},
    # what the compile stage passes: the target's [tensorrt] table (config.TensorRTOptions) plus int8/fp16
    {"version": "10.3", "jetpack": "6.1", "workspace_mb": 2048, "fp16_fallback": True, "dla_core": 0,
     "gpu_fallback": True, "max_batch": 1, "int8": True, "fp16": True},
    {"min_opt_max_batch": [1, 8, 32], "fp16_fallback": False, "max_batch": 32},
])
def test_build_script_is_valid_and_standalone(tmp_path, opts):
    import shutil
    files = trt_backend.build_script("model.int8.qdq.onnx", "model.plan", opts)
    assert set(files) == {"build_engine.sh", "build_engine.json"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for name, src in trt_backend.device_files().items():     # the device half ships as real files, copied
        shutil.copyfile(src, tmp_path / name)
    sh, py = files["build_engine.sh"], (tmp_path / "build_engine.py").read_text()
    assert subprocess.run(["bash", "-n", str(tmp_path / "build_engine.sh")]).returncode == 0
    assert subprocess.run([sys.executable, "-m", "py_compile", str(tmp_path / "build_engine.py")]).returncode == 0
    for flag in ("--onnx=model.int8.qdq.onnx", "--saveEngine=model.plan", 'PRECISION="--int8',
                 "--timingCacheFile=timing.cache",
                 f"--memPoolSize=workspace:{opts.get('workspace_mb', 1024)}M", "--dumpLayerInfo",
                 "--exportLayerInfo=layer_info.json", "--separateProfileRun", "--avgRuns=", "--warmUp="):
        assert flag in sh
    assert ("--fp16" in sh) == opts.get("fp16_fallback", True)
    assert ("--useDLACore=0" in sh and "--allowGPUFallback" in sh) == ("dla_core" in opts)
    if "min_opt_max_batch" in opts:
        assert all(f in sh for f in ("--minShapes=input:1x1x28x28", "--optShapes=input:8x1x28x28",
                                     "--maxShapes=input:32x1x28x28"))
    else:
        assert "Shapes=" not in sh
    assert "import pipeline" not in py.replace("from pipeline.bundle.devicekit", "").replace("from pipeline.hashing", "")
    # -I: isolated mode (no PYTHONPATH, no cwd on sys.path): the script cannot reach this package
    help_run = subprocess.run([sys.executable, "-I", "build_engine.py", "--help"], cwd=tmp_path, capture_output=True,
                              text=True)
    assert help_run.returncode == 0 and "--golden" in help_run.stdout and "--min-top1-agreement" in help_run.stdout
    if not TRT_HERE:
        run = subprocess.run([sys.executable, "-I", "build_engine.py"], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 2 and "TensorRT's Python package is not installed" in run.stderr


def test_layer_precision_from_engine_inspector_json():
    """Format/Datatype strings as TensorRT's IEngineInspector writes them (TensorRT docs and reports)."""
    from pipeline.bundle import build_engine as be
    def layer(fmt: str) -> dict:
        return {"Name": "l", "LayerType": "CaskConvolution", "Outputs": [{"Name": "o", "Format/Datatype": fmt}]}
    assert be._precision(layer("Thirty-two wide channel vectorized row major Int8 format.")) == "int8"
    assert be._precision(layer("Channel major FP16 format where channel % 8 == 0")) == "fp16"
    assert be._precision(layer("Half")) == "fp16"
    assert be._precision(layer("Row major linear FP32")) == "fp32"
    assert be._precision(layer("Float")) == "fp32"
    assert be._precision({"Outputs": [{"Datatype": "BFloat16", "Format": "Row major linear"}]}) == "bf16"
    assert be._precision({"Name": "shape-only", "Outputs": []}) == "none"


def test_latency_stats():
    from pipeline.bundle.devicekit import latency_stats
    stats = latency_stats([float(v) for v in range(1, 101)])
    assert stats["n"] == 100 and stats["p50"] == 50.5 and stats["min"] == 1.0 and stats["max"] == 100.0
    assert stats["p90"] == pytest.approx(90.1) and stats["p99"] == pytest.approx(99.01)


def test_build_script_rejects_unknown_options():
    with pytest.raises(UserError, match="unknown engine build option"):
        trt_backend.build_script("m.onnx", "m.plan", {"workspace": 1024})


# ---------------------------------------------------------------- [tensorrt] max_batch through the stages
def test_max_batch_gives_a_dynamic_batch_qdq_and_a_batch_profile(run_cli, small_npz, tmp_path):
    """The gpu target asks for max_batch = 32: the QDQ ONNX gets a dynamic batch dim that passes the static
    check as one, the bundle scripts build one optimization profile 1..32, and the host proxy runs any
    batch. (prune off: the loaded model is quantized directly, which keeps the test short.)"""
    out = tmp_path / "gpu"
    r = run_cli("calibrate", "--data", str(small_npz), "--size", "128", "--name", "small-128", "--out-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]     # (the default, auto, would write into the repo's calibration/)
    r = run_cli("run", "--target", "gpu", "--data", str(small_npz), "--out", str(out), "--until", "compile",
                "--set", "prune.enabled=false", "--set", "evaluate.test_limit=100", "--set", "quantize.fallback=false",
                "--set", "load.latency_runs=5", "--set", f"quantize.calibration={tmp_path / 'small-128'}")
    assert r.returncode == 0, r.stderr[-3000:]
    qdq = out / "compile-gpu" / "model.int8.qdq.onnx"
    dims = ort_backend.io_shapes(onnx.load(str(qdq)))["inputs"]["input"]
    assert isinstance(dims[0], str) and list(dims[1:]) == [1, 28, 28]
    assert trt_backend.check_compat(qdq, "10.3", dynamic_batch=True) == []
    import json
    compile_rec = json.loads((out / "compile-gpu" / "stage.json").read_text())["metrics"]
    assert compile_rec["compat_problems"] == []
    sh = (out / "compile-gpu" / "build_engine.sh").read_text()
    assert all(f in sh for f in ("--minShapes=input:1x1x28x28", "--optShapes=input:32x1x28x28",
                                 "--maxShapes=input:32x1x28x28"))
    assert json.loads((out / "compile-gpu" / "build_engine.json").read_text())["min_opt_max_batch"] == [1, 32, 32]
    x = np.zeros((5, 1, 28, 28), np.float32)
    assert ort_backend.Runner(qdq, threads=1).run(x).shape == (5, 10)


def test_fp16_graph_with_underflowing_scales_is_kept_fp32(trained, tmp_path):
    """The same function with conv 2 scaled by 1e-6 and the linear by 1e6 (ReLU and max-pool commute with
    a positive scale): its per-channel weight scales (~1e-9) would flush to zero in fp16, so the graph is
    kept fp32 and says why, and its INT8 numerics still agree with the float model."""
    import copy
    model = copy.deepcopy(trained["model"]).eval()
    with torch.no_grad():
        model[3].weight.mul_(1e-6)
        model[3].bias.mul_(1e-6)
        model[7].weight.mul_(1e6)
    x1 = torch.from_numpy(trained["x"][:1])
    ort_backend.export_onnx(model, x1, tmp_path / "scaled.onnx")
    meta = trt_backend.quantize_int8(tmp_path / "scaled.onnx", trained["calib"], tmp_path / "scaled.qdq.onnx")
    assert meta["high_precision_dtype"] == "fp32" and "below fp16's normal range" in meta["fp16_note"]
    agreement, drop = agreement_and_drop({**trained, "onnx": tmp_path / "scaled.onnx"}, tmp_path / "scaled.qdq.onnx")
    assert agreement >= 0.96 and drop <= 0.02, (agreement, drop)
