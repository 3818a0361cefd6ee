"""TensorRT backend: explicit-quantization (QDQ) INT8 ONNX, a static compatibility check, engine
build and run with the TensorRT Python API, and the on-device build bundle.

TensorRT engines are specific to the GPU and TensorRT version that build them, so for an edge target
the engine is built ON the device. This module therefore has two halves:

* host side (runs anywhere, needs only onnx/onnxruntime/modelopt): `quantize_int8`, `check_compat`,
  `build_script`;
* device side (needs `tensorrt` and a CUDA GPU): `build_engine`, `EngineRunner`.

The device-side work is done by the self-contained functions and classes in the "device side"
section below. They import `tensorrt` lazily, use only numpy plus torch or cuda-python for CUDA
memory, and never import this package: `build_script` copies their source verbatim into
`build_engine.py`, so the script the embedded team runs is the same code `build_engine` runs here.

API used (TensorRT 10 Python API, which TensorRT 8.5+ also has; where 8.x differs it is handled inline):
trt.Builder / create_network / OnnxParser.parse_from_file, IBuilderConfig.set_memory_pool_limit,
BuilderFlag.INT8/FP16/GPU_FALLBACK, create_timing_cache/set_timing_cache/get_timing_cache,
IOptimizationProfile.set_shape, default_device_type/DLA_core, build_serialized_network,
IEngineInspector.get_engine_information(LayerInformationFormat.JSON), IExecutionContext
set_input_shape/set_tensor_address/execute_async_v3.
"""
from __future__ import annotations

import inspect
import json
import pprint
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from pipeline.backends.onnxruntime import (INPUT_NAME, check_calibration, check_node_names, io_shapes,
                                           cpu_session, load_onnx, ort_module, qdq_summary, sha256_file)
from pipeline.errors import UserError

# ---------------------------------------------------------------- TensorRT ONNX parser facts
# Operators TensorRT's ONNX parser imports, from onnx-tensorrt docs/operators.md (github.com/onnx/
# onnx-tensorrt, "TensorRT 10.15 supports operators in the inclusive range of opset 9 to opset 24",
# rows marked "Y"). Ops that docs/Changelog.md records as added after 10.0 carry the version that
# added them (10.1 DeformConv; 10.4 Blackman/Hamming/HannWindow; 10.5 STFT; 10.14 Attention;
# 10.15 RotaryEmbedding, RMSNormalization, TensorScatter); every other op is taken as present from
# 10.0 on. The 10.3 page itself was not available, so 10.3 = this list minus the later additions.
TRT_OPS_SINCE: dict[str, tuple[int, int]] = {
    **{op: (10, 0) for op in (
        "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh",
        "AveragePool", "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat", "Constant",
        "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace",
        "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike",
        "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool",
        "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample", "GroupNormalization",
        "GRU", "HardSigmoid", "HardSwish", "Hardmax", "Identity", "If", "ImageScaler",
        "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less",
        "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization", "LpPool", "MatMul",
        "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul", "Neg",
        "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu",
        "QuantizeLinear", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range",
        "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
        "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize",
        "ReverseSequence", "RNN", "RoiAlign", "Round", "ScaledTanh", "Scan", "Scatter", "ScatterElements",
        "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax",
        "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh",
        "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor")},
    "DeformConv": (10, 1),
    "BlackmanWindow": (10, 4), "HammingWindow": (10, 4), "HannWindow": (10, 4),
    "STFT": (10, 5),
    "Attention": (10, 14),
    "RotaryEmbedding": (10, 15), "RMSNormalization": (10, 15), "TensorScatter": (10, 15),
}
# Highest ONNX opset per documented parser version (operators.md headers of 10.0 and 10.15); a
# version in between gets the bound of the nearest documented version at or below it.
TRT_MAX_OPSET: dict[tuple[int, int], int] = {(10, 0): 20, (10, 15): 24}
TRT_MIN_OPSET = 9
TRT_VERSIONS = ((10, 0), (10, 15))      # the range the tables above describe
DEFAULT_TRT_VERSION = "10.3"
# Output-channel axis of a per-channel quantized weight, by consumer op (input index 1 = the weight).
_WEIGHT_AXIS = {"Conv": lambda node, rank: 0, "ConvTranspose": lambda node, rank: 1,
                "Gemm": lambda node, rank: 0 if _attr(node, "transB", 0) else 1,
                "MatMul": lambda node, rank: rank - 1}
MODELOPT_METHODS = {"minmax": "max", "max": "max", "entropy": "entropy"}


# ---------------------------------------------------------------- availability
def _gpu_count() -> tuple[int, str]:
    """(number of CUDA devices, how it was found) through torch.cuda or cuda-python."""
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.device_count(), "torch.cuda"
    except ImportError:
        pass
    try:
        cudart = _cudart()
    except ImportError:
        return 0, "no CUDA device through torch.cuda, and cuda-python is not installed"
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        return 0, f"cuda-python: cudaGetDeviceCount failed ({err})"
    return int(count), "cuda-python"


def available() -> tuple[bool, str]:
    """(True, version and GPU) when tensorrt imports and a CUDA GPU is visible, else (False, why)."""
    try:
        import tensorrt as trt
    except ImportError as e:
        return False, f"the tensorrt Python package is not installed ({e})"
    count, how = _gpu_count()
    if count < 1:
        return False, f"tensorrt {trt.__version__} is installed but no CUDA GPU is visible ({how})"
    return True, f"tensorrt {trt.__version__}, {count} CUDA device(s) via {how}"


def _require() -> None:
    ok, reason = available()
    if not ok:
        raise UserError(f"TensorRT cannot run here: {reason}",
                        "build and run the engine on the device with the hand-off bundle "
                        "(build_engine.sh / build_engine.py), or use a machine with an NVIDIA GPU and TensorRT")


# ---------------------------------------------------------------- graph facts shared by the checks
def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs of the main graph, as arrays."""
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and _attr(n, "value", None) is not None:
            consts[n.output[0]] = numpy_helper.to_array(_attr(n, "value", None))
    return consts


def _qdq_nodes(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """Every QuantizeLinear/DequantizeLinear with its quantization facts.

    Each entry: node, quantized dtype (None when not determinable), zero point (array or None),
    scale (array or None when not a constant), axis (normalized, None when per-tensor), whether it
    quantizes a weight (constant data, directly or through a QuantizeLinear), weight rank, and the
    consumers of the weight (op node, input index) for the per-channel axis rule.
    """
    consts = _constants(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in model.graph.node:
        for idx, i in enumerate(n.input):
            consumers.setdefault(i, []).append((n, idx))

    def weight_source(node: onnx.NodeProto) -> np.ndarray | None:
        x = node.input[0]
        if x in consts:
            return consts[x]
        src = producers.get(x)
        if node.op_type == "DequantizeLinear" and src is not None and src.op_type == "QuantizeLinear":
            return consts.get(src.input[0])
        return None

    def dq_outputs(node: onnx.NodeProto) -> list[str]:
        if node.op_type == "DequantizeLinear":
            return [node.output[0]]
        return [c.output[0] for c, _ in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"]

    out = []
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        scale = consts.get(n.input[1])
        weight = weight_source(n)
        if zp is not None:
            qtype = zp.dtype
        elif n.op_type == "DequantizeLinear" and n.input[0] in consts:
            qtype = consts[n.input[0]].dtype
        elif n.op_type == "QuantizeLinear":
            qtype = np.dtype(np.uint8)          # ONNX: a QuantizeLinear without zero point outputs uint8
        else:
            qtype = None                         # a DequantizeLinear fed by a QuantizeLinear: checked there
        rank = weight.ndim if weight is not None else None
        axis = None
        if scale is not None and scale.size > 1:
            axis = int(_attr(n, "axis", 1))
            if axis < 0 and rank is not None:
                axis += rank
        out.append({"node": n, "qtype": qtype, "zero_point": zp, "scale": scale, "axis": axis,
                    "weight": weight is not None, "rank": rank,
                    "uses": [use for o in dq_outputs(n) for use in consumers.get(o, [])]})
    return out


def _parse_version(version: str) -> tuple[int, int]:
    m = re.match(r"^(\d+)\.(\d+)", str(version))
    if not m:
        raise UserError(f"cannot read TensorRT version '{version}'", "give it as MAJOR.MINOR, e.g. 10.3")
    v = (int(m.group(1)), int(m.group(2)))
    if not TRT_VERSIONS[0] <= v <= TRT_VERSIONS[1]:
        lo, hi = (".".join(map(str, t)) for t in TRT_VERSIONS)
        raise UserError(f"no TensorRT ONNX operator table for version {version}",
                        f"use a TensorRT version from {lo} to {hi} (tensorrt.version in the target TOML)")
    return v


# ---------------------------------------------------------------- static compatibility check
def check_compat(onnx_path: Path, trt_version: str = DEFAULT_TRT_VERSION, dynamic_batch: bool = False) -> list[dict]:
    """Problems that would stop (or silently change) a TensorRT explicit-quantization build.

    Needs only onnx. Rules (the "rule" of each problem):
      opset              the model's ONNX opset is outside what this parser version reads
      unsupported-op     op not imported by TensorRT's ONNX parser of `trt_version` (or a custom domain)
      qdq-type           quantized type is not int8 (uint8/int32 zero point, or a QuantizeLinear with
                         no zero point, which ONNX defines as uint8)
      qdq-zero-point     zero point not all 0 (TensorRT quantization is symmetric)
      qdq-scale          scale is not a build-time constant
      qdq-axis           per-channel weight scale not on the output-channel axis of its consumer
      qdq-per-channel-activation   an activation quantized per channel (must be per tensor)
      dynamic-shape      a graph input/output dim that is not fixed (the batch dim is allowed when
                         `dynamic_batch`, and then needs an optimization profile at build time)
      static-batch       `dynamic_batch` asked for but the input batch dim is fixed
    Each problem: {"node", "op", "rule", "message"}. An empty list means compatible.
    """
    version = _parse_version(trt_version)
    model = load_onnx(onnx_path)
    problems: list[dict] = []

    def problem(node: str, op: str, rule: str, message: str) -> None:
        problems.append({"node": node, "op": op, "rule": rule, "message": message})

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    max_opset = TRT_MAX_OPSET[max(v for v in TRT_MAX_OPSET if v <= version)]
    if opset is not None and not TRT_MIN_OPSET <= opset <= max_opset:
        problem("", "model", "opset", f"ONNX opset {opset}; TensorRT {trt_version}'s parser reads opsets "
                f"{TRT_MIN_OPSET} to {max_opset}")

    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            problem(n.name, n.op_type, "unsupported-op",
                    f"custom op in domain '{n.domain}': TensorRT needs a plugin for it")
        elif TRT_OPS_SINCE.get(n.op_type, (99, 0)) > version:
            since = TRT_OPS_SINCE.get(n.op_type)
            problem(n.name, n.op_type, "unsupported-op",
                    f"{n.op_type} is not supported by TensorRT {trt_version}'s ONNX parser"
                    + (f" (supported from {since[0]}.{since[1]})" if since else ""))

    for q in _qdq_nodes(model):
        n = q["node"]
        if q["qtype"] is not None and q["qtype"] != np.int8:
            why = "no zero point (ONNX then means uint8)" if q["zero_point"] is None else f"{q['qtype']} zero point"
            problem(n.name, n.op_type, "qdq-type", f"{why}: TensorRT INT8 needs an int8 zero point")
        if q["zero_point"] is not None and np.any(q["zero_point"] != 0):
            problem(n.name, n.op_type, "qdq-zero-point",
                    f"zero point {np.unique(q['zero_point'])[:4].tolist()}: TensorRT needs 0 (symmetric quantization)")
        if q["scale"] is None:
            problem(n.name, n.op_type, "qdq-scale", "scale is not an initializer or Constant")
        if q["axis"] is None:
            continue
        if not q["weight"]:
            problem(n.name, n.op_type, "qdq-per-channel-activation",
                    f"activation quantized per channel (axis {q['axis']}): TensorRT needs one scale per activation")
            continue
        for use, idx in q["uses"]:
            if use.op_type in _WEIGHT_AXIS and idx == 1:
                want = _WEIGHT_AXIS[use.op_type](use, q["rank"])
                if q["axis"] != want:
                    problem(n.name, n.op_type, "qdq-axis",
                            f"per-channel weight scale on axis {q['axis']}, but {use.op_type} '{use.name}' "
                            f"needs the output-channel axis {want}")

    inits = {i.name for i in model.graph.initializer}
    shapes = io_shapes(model)
    for kind, tensors in (("input", shapes["inputs"]), ("output", shapes["outputs"])):
        for name, dims in tensors.items():
            if name in inits:
                continue
            for i, d in enumerate(dims):
                if isinstance(d, int) and d > 0:
                    continue
                if i == 0 and dynamic_batch:
                    continue
                problem(name, kind, "dynamic-shape",
                        f"{kind} dim {i} is dynamic ('{d}'): TensorRT needs fixed dims"
                        + (" (only the batch dim may vary, with min/opt/max batch)" if i else
                           " (or pass dynamic_batch with min/opt/max batch for a profile)"))
            if kind == "input" and dynamic_batch and dims and isinstance(dims[0], int) and dims[0] > 0:
                problem(name, kind, "static-batch",
                        f"dynamic batch asked for, but input batch dim is fixed at {dims[0]}: re-export with dynamic_batch")
    return problems


# ---------------------------------------------------------------- quantize (modelopt, TensorRT-style QDQ)
# modelopt patches onnxruntime.quantization in place (its calibrators and QDQ registry), after which
# onnxruntime's own quantize_static fails in the same process; so modelopt runs in a fresh Python.
# Its output (including a harmless "NVML Shared Library Not Found" on GPU-less hosts) is captured.
_MODELOPT_CHILD = """
import json, sys
import numpy as np
from modelopt.onnx.quantization import quantize
a = json.loads(sys.argv[1])
quantize(a["onnx_in"], quantize_mode="int8", calibration_data=np.load(a["calib"]),
         calibration_method=a["method"], calibration_eps=["cpu"], nodes_to_exclude=a["exclude"] or None,
         high_precision_dtype=a["high_precision_dtype"], output_path=a["onnx_out"], log_level="WARNING")
"""


def _run_modelopt(onnx_in: Path, calib: np.ndarray, onnx_out: Path, method: str, exclude_patterns: list[str],
                  high_precision_dtype: str) -> None:
    """modelopt.onnx.quantization.quantize(quantize_mode="int8", ...) in a child process."""
    with tempfile.TemporaryDirectory(prefix="edge-compress-modelopt.") as tmp:
        np.save(Path(tmp) / "calib.npy", calib)
        args = {"onnx_in": str(onnx_in), "calib": str(Path(tmp) / "calib.npy"), "onnx_out": str(onnx_out),
                "method": method, "exclude": exclude_patterns, "high_precision_dtype": high_precision_dtype}
        proc = subprocess.run([sys.executable, "-c", _MODELOPT_CHILD, json.dumps(args)],
                              capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"modelopt INT8 quantization failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def quantize_int8(onnx_in: Path, calib: np.ndarray, onnx_out: Path, method: str = "entropy",
                  exclude_nodes: Sequence[str] = (), fp16_fallback: bool = True) -> dict:
    """TensorRT explicit-quantization INT8 QDQ ONNX through modelopt.onnx.quantization.quantize.

    int8 symmetric Q/DQ (zero point 0), weights per output channel, activations per tensor, placed
    by modelopt's TensorRT fusion rules. `method`: "minmax" (modelopt "max") or "entropy"; modelopt
    offers no percentile calibration for INT8. With `fp16_fallback` the layers left in float are
    stored as fp16 (high_precision_dtype="fp16"; graph I/O stays float32 through Cast nodes). The
    result must load and run in ONNX Runtime CPU, the host proxy of its INT8 numerics; if the fp16
    graph does not, fp32 is kept and TensorRT still picks fp16 kernels via the FP16 builder flag.
    """
    try:
        import modelopt
    except ImportError as e:
        raise UserError(f"nvidia-modelopt is not installed here ({e})",
                        "pip install -r requirements.txt (nvidia-modelopt, for TensorRT INT8)") from None
    ort = ort_module()

    if method not in MODELOPT_METHODS:
        hint = " (modelopt's INT8 ONNX calibration offers only max and entropy)" if method == "percentile" else ""
        raise UserError(f"calibration method '{method}' is not available for TensorRT INT8{hint}",
                        "use calibration_method = \"entropy\" or \"minmax\" for a TensorRT target")
    model = load_onnx(onnx_in)
    shapes = io_shapes(model)
    if list(shapes["inputs"]) != [INPUT_NAME]:
        raise UserError(f"{onnx_in} has inputs {list(shapes['inputs'])}, expected one named '{INPUT_NAME}'",
                        "quantize a model written by export_onnx")
    input_shape = shapes["inputs"][INPUT_NAME]
    calib = check_calibration(calib, input_shape)
    batch = input_shape[0] if isinstance(input_shape[0], int) else 1
    if len(calib) < batch:
        raise UserError(f"{len(calib)} calibration images for a model with a fixed batch of {batch}",
                        f"give at least {batch} calibration images")
    calib = calib[: len(calib) - len(calib) % batch]
    excluded = check_node_names(model, exclude_nodes)
    onnx_out = Path(onnx_out)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)

    patterns = [f"^{re.escape(n)}$" for n in excluded]     # modelopt matches names as regular expressions
    args = (Path(onnx_in), calib, onnx_out, MODELOPT_METHODS[method], patterns)
    precision = "fp16" if fp16_fallback else "fp32"
    fp16_note = "fp16 graph runs in ONNX Runtime CPU" if fp16_fallback else "fp32 requested"
    _run_modelopt(*args, precision)
    try:
        cpu_session(str(onnx_out)).run(None, {INPUT_NAME: calib[:batch]})
    except Exception as e:  # noqa: BLE001 -- any ORT failure on the fp16 graph triggers the fp32 fallback
        if precision == "fp32":
            raise
        fp16_note = (f"fp16 graph failed in ONNX Runtime CPU ({e.__class__.__name__}); kept fp32 in the ONNX, "
                     "TensorRT picks fp16 kernels through the FP16 builder flag")
        precision = "fp32"
        _run_modelopt(*args, precision)
        cpu_session(str(onnx_out)).run(None, {INPUT_NAME: calib[:batch]})

    quantized = onnx.load(str(onnx_out))
    qdq = _qdq_nodes(quantized)
    zero_points = [q["zero_point"] for q in qdq if q["zero_point"] is not None]
    weight_axes = Counter(f"{use.op_type}:{q['axis']}" for q in qdq
                          if q["weight"] and q["node"].op_type == "DequantizeLinear" for use, _ in q["uses"])
    return {
        "method": method,
        "modelopt_method": MODELOPT_METHODS[method],
        "quantize_mode": "int8",
        "format": "QDQ (TensorRT explicit quantization)",
        "high_precision_dtype": precision,
        "fp16_fallback": fp16_fallback,
        "fp16_note": fp16_note,
        "calibration_eps": ["cpu"],
        "n_calibration": len(calib),
        "excluded": excluded,
        **qdq_summary(quantized),
        "zero_point_dtypes": sorted({str(z.dtype) for z in zero_points}),
        "zero_points_all_zero": all(not np.any(z) for z in zero_points),
        "n_missing_zero_points": sum(q["zero_point"] is None for q in qdq),
        "per_channel_weight_axes": dict(sorted(weight_axes.items())),
        "compat_check": {"tensorrt": DEFAULT_TRT_VERSION, "problems": check_compat(onnx_out, DEFAULT_TRT_VERSION)},
        "modelopt": modelopt.__version__,
        "onnxruntime": ort.__version__,
        "bytes": onnx_out.stat().st_size,
        "sha256": sha256_file(onnx_out),
    }


# ================================================================= device side
# Everything from here to `_device_main` is copied verbatim into build_engine.py by build_script:
# it may use only the standard library, numpy, tensorrt, and torch or cuda-python.

class DeviceError(Exception):
    """A TensorRT build or run problem, reported as one message."""


def _trt_logger(trt):
    """A trt.ILogger that keeps warnings and errors (for error messages and the build record)."""
    keep = {trt.ILogger.Severity.INTERNAL_ERROR: "error", trt.ILogger.Severity.ERROR: "error",
            trt.ILogger.Severity.WARNING: "warning"}

    class KeepLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg):
            if severity in keep:
                self.messages.append(f"{keep[severity]}: {msg}")

        def errors(self) -> str:
            return " | ".join(m for m in self.messages if m.startswith("error"))[-2000:]

    return KeepLogger()


def _precision(layer: dict) -> str:
    """Precision of an engine layer from IEngineInspector JSON: the data type of its first output."""
    outputs = layer.get("Outputs") or []
    if not outputs:
        return "none"
    # TensorRT 10 writes "Format/Datatype" (e.g. "Channel major FP16 format where channel % 8 == 0",
    # "Thirty-two wide channel vectorized row major Int8 format"); later releases split it in two.
    text = (outputs[0].get("Format/Datatype") or " ".join(outputs[0].get(k, "") for k in ("Datatype", "Format"))).upper()
    for key, name in (("UINT8", "uint8"), ("INT8", "int8"), ("FP8", "fp8"), ("FLOAT8", "fp8"), ("BF16", "bf16"),
                      ("BFLOAT16", "bf16"), ("FP16", "fp16"), ("HALF", "fp16"), ("FP32", "fp32"), ("FLOAT", "fp32"),
                      ("INT32", "int32"), ("INT64", "int64"), ("BOOL", "bool")):
        if key in text:
            return name
    return "unknown"


def _engine_layers(trt, engine) -> list[dict]:
    """Name, type and precision of every layer of a deserialized engine (IEngineInspector JSON)."""
    info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    return [{"name": layer.get("Name", ""), "type": layer.get("LayerType", ""), "precision": _precision(layer)}
            for layer in info.get("Layers", []) if isinstance(layer, dict)]


def build_plan(onnx_path: str, plan_path: str, *, int8: bool = True, fp16: bool = True, workspace_mb: int = 1024,
               timing_cache: str | None = None, dla_core: int | None = None, gpu_fallback: bool = True,
               min_opt_max_batch: tuple[int, int, int] | None = None) -> dict:
    """Build a serialized TensorRT engine from an ONNX file and describe it (layers, precisions)."""
    import tensorrt as trt

    log = _trt_logger(trt)
    builder = trt.Builder(log)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:     # before TensorRT 10 implicit batch was the default
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            # node_name()/node_operator() exist from TensorRT 9.1; node() (the node index) always
            where = (f"node '{err.node_name()}' ({err.node_operator()})" if hasattr(err, "node_name")
                     else f"node #{err.node()}")
            errors.append(f"{where}: {err.desc()}")
        raise DeviceError(f"TensorRT's ONNX parser rejected {onnx_path}: " + "; ".join(errors or [log.errors()]))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED

    cache_in = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    cache_loaded = bool(cache_in) and config.set_timing_cache(config.create_timing_cache(cache_in), ignore_mismatch=False)
    if not cache_loaded:      # no cache yet, or one from another GPU/TensorRT version: start an empty one
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    profile_meta = None
    if min_opt_max_batch is not None:
        lo, opt, hi = (int(b) for b in min_opt_max_batch)
        if not 1 <= lo <= opt <= hi:
            raise DeviceError(f"min/opt/max batch {min_opt_max_batch} must satisfy 1 <= min <= opt <= max")
        profile = builder.create_optimization_profile()
        for inp in inputs:
            dims = tuple(inp.shape)
            if dims[0] != -1 or any(d < 0 for d in dims[1:]):
                raise DeviceError(f"input '{inp.name}' has shape {dims}: a batch profile needs a dynamic batch "
                                  "dim and fixed other dims (export with dynamic_batch)")
            profile.set_shape(inp.name, (lo, *dims[1:]), (opt, *dims[1:]), (hi, *dims[1:]))
        config.add_optimization_profile(profile)
        profile_meta = {"min": lo, "opt": opt, "max": hi}
    else:
        for inp in inputs:
            if any(d < 0 for d in inp.shape):
                raise DeviceError(f"input '{inp.name}' has dynamic shape {tuple(inp.shape)}: give min/opt/max batch")

    dla_meta = None
    if dla_core is not None:
        if builder.num_DLA_cores == 0:
            raise DeviceError("this device has no DLA core")
        if not 0 <= dla_core < builder.num_DLA_cores:
            raise DeviceError(f"DLA core {dla_core} does not exist (this device has {builder.num_DLA_cores})")
        if not (int8 or fp16):
            raise DeviceError("DLA runs only INT8 or FP16 layers: enable int8 or fp16")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
        if gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        gpu_only = [layer.name for layer in layers if not config.can_run_on_DLA(layer)]
        if gpu_only and not gpu_fallback:
            raise DeviceError(f"{len(gpu_only)} layers cannot run on DLA ({', '.join(gpu_only[:5])}) and GPU "
                              "fallback is off")
        dla_meta = {"core": int(dla_core), "gpu_fallback": gpu_fallback,
                    "layers_dla_capable": len(layers) - len(gpu_only), "layers_gpu_only": gpu_only}

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    if serialized is None:
        raise DeviceError(f"TensorRT could not build the engine: {log.errors() or 'see the TensorRT log'}")
    Path(plan_path).parent.mkdir(parents=True, exist_ok=True)
    with open(plan_path, "wb") as f:
        f.write(serialized)
    cache_meta = None
    if timing_cache:
        with open(timing_cache, "wb") as f:
            f.write(config.get_timing_cache().serialize())
        cache_meta = {"path": str(timing_cache), "loaded": cache_loaded, "bytes": Path(timing_cache).stat().st_size}

    engine = trt.Runtime(log).deserialize_cuda_engine(serialized)
    if engine is None:
        raise DeviceError(f"TensorRT could not load the engine it built: {log.errors()}")
    layers = _engine_layers(trt, engine)
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    io = [{"name": n, "mode": engine.get_tensor_mode(n).name, "shape": list(engine.get_tensor_shape(n)),
           "dtype": engine.get_tensor_dtype(n).name} for n in names]
    return {
        "tensorrt": trt.__version__,
        "onnx": str(onnx_path),
        "plan": str(plan_path),
        "plan_bytes": Path(plan_path).stat().st_size,
        "build_s": round(build_s, 3),
        "flags": {"int8": int8, "fp16": fp16},
        "workspace_mb": int(workspace_mb),
        "timing_cache": cache_meta,
        "profile": profile_meta,
        "dla": dla_meta,
        "io": io,
        "n_layers": engine.num_layers,
        "layer_precisions": dict(Counter(layer["precision"] for layer in layers)),
        "layers": layers,
        "warnings": [m for m in log.messages if m.startswith("warning")][:50],
    }


def _cudart():
    """cuda-python's CUDA runtime module (its newer and older import paths)."""
    try:
        from cuda.bindings import runtime as cudart     # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart                          # older cuda-python
    return cudart


class _TorchCuda:
    """CUDA buffers, a stream and timing events through torch.cuda."""

    name = "torch.cuda"

    def __init__(self):
        import torch
        self.torch = torch
        self.stream = torch.cuda.Stream()
        self.handle = self.stream.cuda_stream

    def alloc(self, shape: tuple) -> tuple[Any, int]:
        buf = self.torch.empty(tuple(shape), dtype=self.torch.float32, device="cuda")
        return buf, buf.data_ptr()

    def free(self, buf: Any) -> None:
        """Nothing to do: torch frees the tensor when its last reference goes."""

    def h2d(self, buf: Any, x: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            buf.copy_(self.torch.from_numpy(x))

    def d2h(self, buf: Any, shape: tuple) -> np.ndarray:
        with self.torch.cuda.stream(self.stream):
            return buf.cpu().numpy().reshape(shape)

    def event(self) -> Any:
        return self.torch.cuda.Event(enable_timing=True)

    def record(self, event: Any) -> None:
        event.record(self.stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(start.elapsed_time(end))


class _CudaPython:
    """CUDA buffers, a stream and timing events through cuda-python (the TensorRT samples' way)."""

    name = "cuda-python"

    def __init__(self):
        self.rt = _cudart()
        self.stream = self._call(self.rt.cudaStreamCreate())
        self.handle = self.stream

    def _call(self, result: tuple) -> Any:
        err, rest = result[0], result[1:]
        if err != self.rt.cudaError_t.cudaSuccess:
            raise DeviceError(f"CUDA runtime error: {err}")
        return rest[0] if len(rest) == 1 else None

    def alloc(self, shape: tuple) -> tuple[Any, int]:
        ptr = self._call(self.rt.cudaMalloc(int(np.prod(shape)) * 4))
        return ptr, int(ptr)

    def free(self, buf: Any) -> None:
        self._call(self.rt.cudaFree(buf))

    def h2d(self, buf: Any, x: np.ndarray) -> None:
        self._call(self.rt.cudaMemcpyAsync(buf, x, x.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))

    def d2h(self, buf: Any, shape: tuple) -> np.ndarray:
        out = np.empty(shape, np.float32)
        self._call(self.rt.cudaMemcpyAsync(out, buf, out.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        self._call(self.rt.cudaStreamSynchronize(self.stream))
        return out

    def event(self) -> Any:
        return self._call(self.rt.cudaEventCreate())

    def record(self, event: Any) -> None:
        self._call(self.rt.cudaEventRecord(event, self.stream))

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self._call(self.rt.cudaEventSynchronize(end))
        return float(self._call(self.rt.cudaEventElapsedTime(start, end)))


def _cuda_memory():
    """torch.cuda when torch sees a GPU, else cuda-python."""
    try:
        import torch
        if torch.cuda.is_available():
            return _TorchCuda()
    except ImportError:
        pass
    try:
        return _CudaPython()
    except ImportError:
        raise DeviceError("no CUDA binding: install torch with CUDA or cuda-python") from None


class TrtRunner:
    """Deserialize a plan and run it: float32 NCHW in, float32 logits out, CUDA-event timing."""

    def __init__(self, plan_path: str):
        import tensorrt as trt

        self.log = _trt_logger(trt)
        self.engine = trt.Runtime(self.log).deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise DeviceError(f"cannot deserialize {plan_path} (built by another TensorRT version or GPU?): "
                              f"{self.log.errors()}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise DeviceError(f"the engine has inputs {ins} and outputs {outs}; one of each is supported")
        if any(self.engine.get_tensor_dtype(n) != trt.DataType.FLOAT for n in names):
            raise DeviceError("the engine's input/output are not float32")
        self.input_name, self.output_name = ins[0], outs[0]
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        self.dynamic = shape[0] == -1
        self.max_batch = self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0] if self.dynamic else shape[0]
        self.sample_shape = shape[1:]
        self.mem = _cuda_memory()
        self._bound: tuple | None = None

    def _bind(self, n: int) -> tuple:
        if self._bound is None or self._bound[0] != n:
            if self._bound is not None:
                self.mem.free(self._bound[1])
                self.mem.free(self._bound[2])
            if not self.context.set_input_shape(self.input_name, (n, *self.sample_shape)):
                raise DeviceError(f"the engine does not accept a batch of {n}")
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            in_buf, in_ptr = self.mem.alloc((n, *self.sample_shape))
            out_buf, out_ptr = self.mem.alloc(out_shape)
            self.context.set_tensor_address(self.input_name, in_ptr)
            self.context.set_tensor_address(self.output_name, out_ptr)
            self._bound = (n, in_buf, out_buf, out_shape)
        return self._bound

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.mem.handle):
            raise DeviceError(f"execute_async_v3 failed: {self.log.errors()}")

    def infer(self, x: np.ndarray) -> np.ndarray:
        """One execution on a batch the engine accepts."""
        _, in_buf, out_buf, out_shape = self._bind(len(x))
        self.mem.h2d(in_buf, np.ascontiguousarray(x, dtype=np.float32))
        self._execute()
        return self.mem.d2h(out_buf, out_shape)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits for any number of images, in batches the engine accepts."""
        if tuple(x.shape[1:]) != tuple(self.sample_shape):
            raise DeviceError(f"input images have shape {tuple(x.shape[1:])}, the engine expects {tuple(self.sample_shape)}")
        if not self.dynamic and len(x) % self.max_batch:
            raise DeviceError(f"{len(x)} images for an engine with a fixed batch of {self.max_batch}")
        return np.concatenate([self.infer(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)])

    def time(self, x: np.ndarray, warmup: int, runs: int) -> list[float]:
        """GPU time (ms, CUDA events around execute_async_v3) of `runs` executions on one batch of x;
        the batch is the engine's fixed batch, or len(x) for a dynamic engine. Copies are not timed."""
        batch = x[: self.max_batch] if not self.dynamic else x
        _, in_buf, _, _ = self._bind(len(batch))
        self.mem.h2d(in_buf, np.ascontiguousarray(batch, dtype=np.float32))
        for _ in range(warmup):
            self._execute()
        start, end = self.mem.event(), self.mem.event()
        times = []
        for _ in range(runs):
            self.mem.record(start)
            self._execute()
            self.mem.record(end)
            times.append(self.mem.elapsed_ms(start, end))
        return times


def latency_stats(times_ms: list[float]) -> dict:
    """p50/p90/p99/mean/min/max of a list of latencies in ms."""
    t = np.asarray(times_ms, dtype=np.float64)
    return {"n": int(t.size), "p50": float(np.percentile(t, 50)), "p90": float(np.percentile(t, 90)),
            "p99": float(np.percentile(t, 99)), "mean": float(t.mean()), "min": float(t.min()), "max": float(t.max())}


def _sha256(path: str | Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _device_name(gpu: bool) -> dict:
    """{"name", "source"} of this machine: the device tree (Jetson, Raspberry Pi); for GPU work nvidia-smi
    or torch.cuda; otherwise the CPU model in /proc/cpuinfo. name and source are None when nothing tells."""
    import subprocess

    tree = Path("/proc/device-tree/model")
    if tree.is_file():
        name = tree.read_bytes().rstrip(b"\x00").decode(errors="replace").strip()
        if name:
            return {"name": name, "source": str(tree)}
    if gpu:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30, check=False)
            names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
            if out.returncode == 0 and names:
                return {"name": names[0], "source": "nvidia-smi"}
        except (OSError, subprocess.TimeoutExpired):
            pass
        try:
            import torch
            if torch.cuda.is_available():
                return {"name": torch.cuda.get_device_name(0), "source": "torch.cuda"}
        except ImportError:
            pass
        return {"name": None, "source": None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model") and value.strip():
                return {"name": value.strip(), "source": "/proc/cpuinfo"}
    except OSError:
        pass
    return {"name": None, "source": None}


def device_report(written_by: str, artifact: str | Path, runtime: dict, gpu: bool) -> dict:
    """A device report (schema: pipeline/report/schema.py) holding what is known before any work: who
    wrote it, the target (from the manifest.json beside the artifact), this device, the runtime, and the
    artifact's sha256 beside the one its manifest lists. The caller fills in engine, build,
    layer_precisions, check and latency_ms (None until measured), or error."""
    from datetime import datetime, timezone

    artifact = Path(artifact)
    manifest_path = artifact.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    listed = manifest.get("files", {}).get(artifact.name)
    sha = _sha256(artifact) if artifact.is_file() else None
    return {"device_report_version": 1, "written_by": written_by,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "target": manifest.get("target"), "backend": manifest.get("backend"),
            "device": _device_name(gpu), "runtime": runtime,
            "tensorrt": runtime["version"] if runtime["name"] == "tensorrt" else None,
            "artifact": {"file": artifact.name, "sha256": sha, "manifest_sha256": listed,
                         "matches_manifest": None if listed is None or sha is None else listed == sha},
            "engine": None, "build": None, "layer_precisions": None, "check": None, "latency_ms": None}


def golden_check(out: np.ndarray, y: np.ndarray, labels: np.ndarray | None, atol: float, rtol: float,
                 min_top1_agreement: float) -> dict:
    """Outputs `out` for the golden inputs against the expected outputs `y` (and the labels, when given)."""
    y = np.asarray(y, dtype=np.float32)
    err = np.abs(out - y)
    agreement = float((out.argmax(1) == y.argmax(1)).mean())
    within = bool(np.all(err <= atol + rtol * np.abs(y)))
    return {"n": int(len(y)), "max_abs_err": float(err.max()), "mean_abs_err": float(err.mean()),
            "atol": atol, "rtol": rtol, "within_tolerance": within,
            "top1_agreement": agreement, "min_top1_agreement": min_top1_agreement,
            "accuracy_on_golden": None if labels is None else float((out.argmax(1) == labels).mean()),
            "passed": within and agreement >= min_top1_agreement}


def device_latency(times_ms: list[float], warmup: int, batch: int, what: str) -> dict:
    """The device report's latency_ms: p50/p90/p99/mean/min/max of the timed runs, measured where="device"."""
    return {**latency_stats(times_ms), "warmup": warmup, "batch": batch, "where": "device", "what": what}


def _device_main(defaults: dict, argv: list[str] | None = None) -> int:
    """build_engine.py: build the plan, check it against golden samples, time it, write a JSON report."""
    import argparse

    d = defaults
    ap = argparse.ArgumentParser(description="Build, check and time the TensorRT engine on this device.")
    ap.add_argument("--onnx", default=d["onnx"], help="QDQ ONNX model (default: %(default)s)")
    ap.add_argument("--plan", default=d["plan"], help="engine file to write (default: %(default)s)")
    ap.add_argument("--skip-build", action="store_true", help="reuse an existing --plan")
    ap.add_argument("--int8", action=argparse.BooleanOptionalAction, default=d["int8"])
    ap.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=d["fp16"])
    ap.add_argument("--workspace-mb", type=int, default=d["workspace_mb"])
    ap.add_argument("--timing-cache", default=d["timing_cache"])
    ap.add_argument("--dla-core", type=int, default=d["dla_core"])
    ap.add_argument("--gpu-fallback", action=argparse.BooleanOptionalAction, default=d["gpu_fallback"])
    ap.add_argument("--min-opt-max-batch", type=int, nargs=3, default=d["min_opt_max_batch"])
    ap.add_argument("--golden", default=d["golden"], help="npz with inputs x and expected outputs y")
    ap.add_argument("--atol", type=float, default=d["atol"])
    ap.add_argument("--rtol", type=float, default=d["rtol"])
    ap.add_argument("--min-top1-agreement", type=float, default=d["min_top1_agreement"])
    ap.add_argument("--warmup", type=int, default=d["warmup"], help="untimed runs before timing")
    ap.add_argument("--runs", type=int, default=d["runs"], help="timed runs")
    ap.add_argument("--report", default=d["report"], help="JSON device report to write")
    args = ap.parse_args(argv)
    try:
        import tensorrt
    except ImportError as e:
        print(f"error: TensorRT's Python package is not installed ({e}); on a Jetson it comes with JetPack "
              "(python3-libnvinfer)", file=sys.stderr)
        return 2
    expected = d["target"]["tensorrt"]
    match = ".".join(tensorrt.__version__.split(".")[:2]) == ".".join(expected.split(".")[:2])
    if not match:
        print(f"warning: this device has TensorRT {tensorrt.__version__}, the bundle was prepared for {expected}",
              file=sys.stderr)
    report = device_report("build_engine.py", args.onnx, {"name": "tensorrt", "version": tensorrt.__version__,
                                                          "expected": d["target"], "version_match": match}, gpu=True)
    try:
        if args.skip_build:
            report["build"] = {"plan": args.plan, "skipped": True}
        else:
            report["build"] = build_plan(
                args.onnx, args.plan, int8=args.int8, fp16=args.fp16, workspace_mb=args.workspace_mb,
                timing_cache=args.timing_cache, dla_core=args.dla_core, gpu_fallback=args.gpu_fallback,
                min_opt_max_batch=tuple(args.min_opt_max_batch) if args.min_opt_max_batch else None)
        runner = TrtRunner(args.plan)
        report["runtime"]["cuda_binding"] = runner.mem.name
        report["engine"] = {"file": Path(args.plan).name, "sha256": _sha256(args.plan), "built_here": not args.skip_build}
        report["layer_precisions"] = dict(Counter(layer["precision"] for layer in _engine_layers(tensorrt, runner.engine)))
        golden = np.load(args.golden)
        x = golden["x"].astype(np.float32)
        report["check"] = golden_check(runner.run(x), golden["y"], golden["labels"] if "labels" in golden.files else None,
                                       args.atol, args.rtol, args.min_top1_agreement)
        batch = x[:1] if runner.dynamic else x[:runner.max_batch]      # the engine's batch; 1 if dynamic
        times = runner.time(batch, args.warmup, args.runs)
        report["latency_ms"] = device_latency(times, args.warmup, len(batch),
                                              "GPU time of execute_async_v3 between CUDA events, copies excluded")
    except (DeviceError, OSError, KeyError) as e:     # build/run problems, a missing file or npz key
        report["error"] = f"{e.__class__.__name__}: {e}"
        print(f"error: {e}", file=sys.stderr)
    Path(args.report).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "build"} | {"report": args.report}, indent=2))
    if "error" in report:
        return 2
    return 0 if report["check"]["passed"] else 1


# ================================================================= host side: pipeline wrappers
def build_engine(onnx_path: Path, plan_path: Path, *, int8: bool = True, fp16: bool = True, workspace_mb: int = 1024,
                 timing_cache: Path | None = None, dla_core: int | None = None, gpu_fallback: bool = True,
                 min_opt_max_batch: tuple[int, int, int] | None = None) -> dict:
    """Build a TensorRT engine (plan) here; needs tensorrt and a CUDA GPU (UserError otherwise).

    INT8 comes only from the Q/DQ nodes of the ONNX (explicit quantization, no calibrator). Returns
    the build record of `build_plan`: flags, workspace, timing cache use, profile, DLA placement,
    engine I/O and per-layer precisions from IEngineInspector.
    """
    _require()
    model = load_onnx(onnx_path)
    if int8 and not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        raise UserError(f"{onnx_path} has no QuantizeLinear nodes, so TensorRT has no INT8 scales",
                        "build from the QDQ model of tensorrt.quantize_int8, or build with int8=False")
    if workspace_mb < 1:
        raise UserError(f"workspace_mb must be positive, got {workspace_mb}", "set tensorrt.workspace_mb to 256 or more")
    try:
        return build_plan(str(onnx_path), str(plan_path), int8=int8, fp16=fp16, workspace_mb=workspace_mb,
                          timing_cache=str(timing_cache) if timing_cache else None, dla_core=dla_core,
                          gpu_fallback=gpu_fallback, min_opt_max_batch=min_opt_max_batch)
    except DeviceError as e:
        raise UserError(str(e), "run check_compat on the ONNX and fix what it reports, or change the build options") from None


class EngineRunner:
    """Run a TensorRT plan on this machine's GPU (torch.cuda or cuda-python memory)."""

    layout = "NCHW"

    def __init__(self, plan_path: Path):
        _require()
        plan_path = Path(plan_path)
        if not plan_path.is_file():
            raise UserError(f"TensorRT engine not found: {plan_path}", "build it first (build_engine)")
        try:
            self._runner = TrtRunner(str(plan_path))
        except DeviceError as e:
            raise UserError(str(e), "rebuild the engine on this machine with build_engine") from None
        self.input_name = self._runner.input_name
        self.input_shape = (None if self._runner.dynamic else self._runner.max_batch, *self._runner.sample_shape)

    def run(self, x: np.ndarray) -> np.ndarray:
        """float32 logits for normalized float32 NCHW images (any count; run in engine batches)."""
        try:
            return self._runner.run(np.ascontiguousarray(x, dtype=np.float32))
        except DeviceError as e:
            raise UserError(str(e), "pass normalized float32 NCHW images of the engine's input shape") from None

    def layer_precisions(self) -> dict[str, int]:
        """How many engine layers run in each precision (IEngineInspector; detailed only for engines
        built with detailed profiling verbosity, as build_engine and build_engine.sh do)."""
        import tensorrt as trt
        return dict(Counter(layer["precision"] for layer in _engine_layers(trt, self._runner.engine)))

    def time(self, x: np.ndarray, warmup: int, runs: int) -> list[float]:
        """ms per run from CUDA events around execute_async_v3 (one engine batch of x; copies excluded)."""
        try:
            return self._runner.time(np.ascontiguousarray(x, dtype=np.float32), warmup, runs)
        except DeviceError as e:
            raise UserError(str(e), "pass a batch the engine accepts") from None


# ---------------------------------------------------------------- on-device bundle
BUILD_OPTS: dict[str, Any] = {
    # engine build: the build_engine / trtexec options
    "int8": True, "fp16": True, "workspace_mb": 1024, "timing_cache": "timing.cache", "dla_core": None,
    "gpu_fallback": True, "min_opt_max_batch": None,
    # the target's [tensorrt] table (config.TensorRTOptions): expected toolchain, recorded in the report;
    # fp16_fallback is the default of fp16 when fp16 is not given
    "version": DEFAULT_TRT_VERSION, "jetpack": None, "fp16_fallback": True, "max_batch": 1,
    # golden check (defaults match the hand-off manifest's TensorRT tolerances) and timing
    "input_shape": [1, 1, 28, 28], "golden": "golden.npz", "atol": 0.25, "rtol": 0.0, "min_top1_agreement": 0.9,
    "warmup": 50, "runs": 1000, "warmup_ms": 500, "report": "device_report.json",
}
_DEVICE_CODE = (DeviceError, _trt_logger, _precision, _engine_layers, build_plan, _cudart, _TorchCuda, _CudaPython,
                _cuda_memory, TrtRunner, latency_stats, _sha256, _device_name, device_report, golden_check,
                device_latency, _device_main)


def _shape_arg(name: str, batch: int, sample: Sequence[int]) -> str:
    return f"{name}:{'x'.join(str(d) for d in (batch, *sample))}"


def build_script(onnx_name: str, plan_name: str, opts: dict) -> dict[str, str]:
    """Files of the on-device bundle: build_engine.sh (trtexec) and build_engine.py (TensorRT Python
    API build + golden check + latency report; needs only tensorrt, numpy and torch or cuda-python).

    `opts` overrides BUILD_OPTS (unknown keys are an error). Both files expect the ONNX, the golden
    .npz and (optionally) the timing cache next to them.
    """
    unknown = sorted(set(opts) - set(BUILD_OPTS))
    if unknown:
        raise UserError(f"unknown engine build option(s): {', '.join(unknown)}", f"use {', '.join(BUILD_OPTS)}")
    o = {**BUILD_OPTS, **opts}
    o["fp16"] = opts.get("fp16", o["fp16_fallback"])
    if o["min_opt_max_batch"] is not None and len(o["min_opt_max_batch"]) != 3:
        raise UserError(f"min_opt_max_batch must be three numbers, got {o['min_opt_max_batch']}",
                        "give [min, opt, max] batch sizes")
    sample = list(o["input_shape"])[1:]

    flags = [f"--onnx={shlex.quote(onnx_name)}", f"--saveEngine={shlex.quote(plan_name)}"]
    flags += ["--int8"] if o["int8"] else []
    flags += ["--fp16"] if o["fp16"] else []
    flags += [f"--memPoolSize=workspace:{int(o['workspace_mb'])}M",
              f"--timingCacheFile={shlex.quote(str(o['timing_cache']))}"]
    if o["dla_core"] is not None:
        flags += [f"--useDLACore={int(o['dla_core'])}"] + (["--allowGPUFallback"] if o["gpu_fallback"] else [])
    if o["min_opt_max_batch"] is not None:
        lo, opt, hi = o["min_opt_max_batch"]
        flags += [f"--minShapes={_shape_arg(INPUT_NAME, lo, sample)}", f"--optShapes={_shape_arg(INPUT_NAME, opt, sample)}",
                  f"--maxShapes={_shape_arg(INPUT_NAME, hi, sample)}"]
    flags += ["--profilingVerbosity=detailed", "--dumpLayerInfo", "--exportLayerInfo=layer_info.json",
              "--separateProfileRun", "--dumpProfile", "--exportProfile=profile.json",
              f"--warmUp={int(o['warmup_ms'])}", f"--iterations={int(o['runs'])}", f"--avgRuns={min(int(o['runs']), 100)}",
              "--duration=0", "--exportTimes=times.json"]
    sh = "\n".join([
        "#!/usr/bin/env bash",
        "# Build and time the TensorRT engine ON this device with trtexec (written by edge-compress).",
        f"# Expected toolchain: TensorRT {o['version']}" + (f", JetPack {o['jetpack']}" if o["jetpack"] else "") + ".",
        "# Engines are specific to the GPU and TensorRT version that build them: run this on the target.",
        "# Extra trtexec flags can be appended: ./build_engine.sh --verbose",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
        '"$TRTEXEC" \\',
        *[f"  {f} \\" for f in flags],
        '  "$@" 2>&1 | tee trtexec.log',
        "",
    ])

    defaults = {"onnx": onnx_name, "plan": plan_name, **{k: o[k] for k in (
        "int8", "fp16", "workspace_mb", "timing_cache", "dla_core", "gpu_fallback", "golden", "atol", "rtol",
        "min_top1_agreement", "warmup", "runs", "report")},
        "min_opt_max_batch": list(o["min_opt_max_batch"]) if o["min_opt_max_batch"] is not None else None,
        "target": {"tensorrt": str(o["version"]), "jetpack": o["jetpack"], "max_batch": int(o["max_batch"])}}
    py = "\n".join([
        "#!/usr/bin/env python3",
        '"""Build, check and time the TensorRT engine on this device (written by edge-compress).',
        "",
        "Needs only tensorrt, numpy, and torch (with CUDA) or cuda-python. Builds the engine from the QDQ",
        "ONNX with the TensorRT Python API, runs the golden inputs (npz: x, y) through it, compares with",
        "the expected outputs, times it with CUDA events and writes a JSON device report.",
        "    python3 build_engine.py            # defaults below; --help for options",
        "Exit code: 0 check passed, 1 check failed, 2 build/run error.",
        '"""',
        "from __future__ import annotations",
        "",
        "import json",
        "import sys",
        "import time",
        "from collections import Counter",
        "from pathlib import Path",
        "from typing import Any",
        "",
        "import numpy as np",
        "",
        f"DEFAULTS = {pprint.pformat(defaults, sort_dicts=False)}",
        "",
        "",
        *(inspect.getsource(obj) + "\n" for obj in _DEVICE_CODE),
        'if __name__ == "__main__":',
        "    sys.exit(_device_main(DEFAULTS))",
        "",
    ])
    return {"build_engine.sh": sh, "build_engine.py": py}
