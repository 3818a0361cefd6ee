"""ONNX Runtime facts and graph helpers shared by export, quantize, the runner and TensorRT's host half.

ONNX Runtime is imported only inside the functions that need it, so importing this module never
fails. Exported graphs take the model's inputs by name (a single input stored as x_<split> is named
"input") and give one output named "logits" (whatever the task: class logits, regression values).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from pipeline.errors import UserError
from pipeline.data.inputs import Inputs

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_OPSET, MAX_OPSET = 17, 20          # the TorchScript exporter's range that TensorRT 10 also parses
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# ONNX Runtime's default for CalibrationMethod.Percentile (recorded in the meta, not tuned here).
PERCENTILE = 99.999
OPT_LEVELS = ("disable", "basic", "extended", "layout", "all")
# onnxruntime's quantize_static collects all calibration outputs, then builds ONE histogram of 128 bins
# for 128 quantized bins (neither settable through quantize_static); the KL search then has a single
# candidate, the full range. So "entropy" yields exactly the MinMax ranges (tested: identical bytes).
ENTROPY_NOTE = ("onnxruntime quantize_static's entropy search uses 128 histogram bins for 128 quantized bins, "
                "so its only candidate is the full range: the ranges equal MinMax")
# Activation type of the CPU QDQ model: asymmetric QUInt8 (weights QInt8: the U8S8 pair).
# Measured with ORT 1.32 on this project's AVX-512 VNNI host, 256 Fashion-MNIST test images, MinMax:
# small ResNet (briefly trained): QUInt8 argmax agreement with FP32 1.000, mean |logit error| 0.036,
# p50 0.30 ms vs FP32 1.0 ms; symmetric QInt8: 0.992, 0.048, p50 1.5 ms (slower than FP32).
# 2-layer CNN: QUInt8 0.984 / 0.024, QInt8 0.988 / 0.029. Why: post-ReLU tensors are >= 0, so uint8
# with a zero point of 0 spends all 256 levels on [0, max] (and ORT then drops the Relu), where
# symmetric int8 wastes half of them; and U8S8 is the pair ORT's x86 int8 kernels are built for.
ACTIVATION_TYPE = "QUInt8"
ACTIVATION_TYPE_REASON = (
    "QUInt8 activations: lower mean logit error vs FP32 than symmetric QInt8 on both test models "
    "(post-ReLU tensors are >= 0: uint8 uses all 256 levels, int8 half) and U8S8 is ONNX Runtime's fast "
    "x86 int8 path (QInt8 activations measured slower than FP32 here)"
)


def ort_module():
    """The onnxruntime package, or a UserError saying how to get it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise UserError(f"onnxruntime is not installed here ({e})",
                        "pip install -r requirements.txt (onnxruntime)") from None
    return onnxruntime


def available() -> tuple[bool, str]:
    """(True, version and providers) when onnxruntime imports, else (False, why)."""
    try:
        import onnxruntime
    except ImportError as e:
        return False, f"onnxruntime is not installed ({e})"
    return True, f"onnxruntime {onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})"


def cpu_session(model: str | bytes, options: Any = None) -> Any:
    """An ONNX Runtime CPU session; ORT warnings (e.g. "can't constant fold" notes on fp16 QDQ
    graphs) are not logged, errors are."""
    ort = ort_module()
    so = options if options is not None else ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- graph helpers
def load_onnx(path: Path) -> onnx.ModelProto:
    """Load an ONNX file, turning a missing or unreadable file into a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model not found: {path}", "pass the path of an existing .onnx file")
    try:
        return onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 -- any unreadable file is the same user error
        raise UserError(f"cannot read ONNX model {path}: {e.__class__.__name__}: {e}",
                        "pass an .onnx file written by torch.onnx.export or an earlier stage") from None


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    """Shape of a graph input/output: ints for fixed dims, the symbol (or "?") for dynamic ones."""
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in value_info.type.tensor_type.shape.dim)


def io_shapes(model: onnx.ModelProto) -> dict[str, dict[str, tuple[int | str, ...]]]:
    """{"inputs": {name: shape}, "outputs": {name: shape}}; initializers are not inputs."""
    inits = {i.name for i in model.graph.initializer}
    return {
        "inputs": {v.name: _dims(v) for v in model.graph.input if v.name not in inits},
        "outputs": {v.name: _dims(v) for v in model.graph.output},
    }


def input_dtypes(model: onnx.ModelProto) -> dict[str, np.dtype]:
    """The numpy dtype of every graph input (initializers are not inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return {v.name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type))
            for v in model.graph.input if v.name not in inits}


def check_calibration(calib, input_shapes: dict[str, Sequence[int | str]],
                      dtypes: dict[str, np.dtype] | None = None) -> dict[str, np.ndarray]:
    """Validate normalized calibration inputs (Inputs, a dict, or one array for a single-input model) against
    the model's inputs {name: shape}; return {name: contiguous array}: float32, or int64 for integer inputs."""
    if isinstance(calib, np.ndarray) and len(input_shapes) == 1:
        calib = {next(iter(input_shapes)): calib}
    arrays = dict(calib.items()) if isinstance(calib, (Inputs, dict)) else None
    if arrays is None:
        raise UserError(f"calibration data is {type(calib).__name__}", "pass normalized inputs (Inputs or arrays by name)")
    if len(arrays) == 1 and len(input_shapes) == 1:
        arrays = {next(iter(input_shapes)): next(iter(arrays.values()))}
    if set(arrays) != set(input_shapes):
        raise UserError(f"calibration inputs {sorted(arrays)} do not match the model's inputs {sorted(input_shapes)}",
                        "calibrate with one array per model input, named like forward()'s parameters")
    out = {}
    for name, shape in input_shapes.items():
        a = arrays[name]
        if not isinstance(a, np.ndarray) or a.ndim != len(shape):
            got = a.shape if isinstance(a, np.ndarray) else type(a).__name__
            raise UserError(f"calibration data for '{name}' has shape {got}, the model input is {tuple(shape)}",
                            "pass normalized inputs of the model's input shapes")
        if len(a) == 0:
            raise UserError("the calibration set is empty", "give at least one calibration sample (a few hundred is typical)")
        want, got = tuple(shape[1:]), tuple(a.shape[1:])
        if any(isinstance(w, int) and w != g for w, g in zip(want, got)):
            raise UserError(f"calibration samples of '{name}' have shape {got}, the model expects {want}",
                            "calibrate with samples of the model's input shape (same size and channels)")
        want_int = dtypes is not None and np.dtype(dtypes.get(name, np.float32)).kind in "iub"
        if a.dtype.kind in "iub" and want_int:
            out[name] = np.ascontiguousarray(a, dtype=dtypes[name])
            continue
        if not np.issubdtype(a.dtype, np.floating):
            raise UserError(f"calibration data for '{name}' is {a.dtype}, expected normalized float32",
                            "normalize the inputs first (Dataset.normalize)")
        a = np.ascontiguousarray(a, dtype=np.float32)
        if not np.isfinite(a).all():
            raise UserError("calibration data contains NaN or infinite values", "drop or fix those samples")
        out[name] = a
    return out


def check_node_names(model: onnx.ModelProto, names: Sequence[str]) -> list[str]:
    """The given node names, after checking every one exists in the graph (a typo is an error)."""
    existing = {n.name for n in model.graph.node}
    missing = [n for n in names if n not in existing]
    if missing:
        sample = ", ".join(sorted(existing)[:5])
        raise UserError(f"nodes to keep in float not found in the graph: {', '.join(missing)}",
                        f"use node names of the exported ONNX (for example {sample})")
    return list(names)


WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def qdq_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Q/DQ counts, the nodes fed by a DequantizeLinear ("quantized"), the weighted layers that are
    not ("float_layers": excluded, or left in float by the quantizer), the opset and graph I/O."""
    producers = {o: n for n in model.graph.node for o in n.output}
    ops = Counter(n.op_type for n in model.graph.node)
    fed = {n.name for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
           and any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input)}
    inits = {i.name for i in model.graph.initializer}
    io = {v.name: {"name": v.name, "shape": list(_dims(v)),
                   "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name}
          for v in [*model.graph.input, *model.graph.output] if v.name not in inits}
    return {"n_quantize_linear": ops["QuantizeLinear"], "n_dequantize_linear": ops["DequantizeLinear"],
            "n_quantized_nodes": len(fed), "quantized_nodes": sorted(fed),
            "float_layers": [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS and n.name not in fed],
            "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "input": next(io[v.name] for v in model.graph.input if v.name not in inits),
            "output": io[model.graph.output[0].name]}
