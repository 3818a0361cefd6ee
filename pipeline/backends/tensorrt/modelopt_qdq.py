"""TensorRT-style INT8: explicit-quantization QDQ ONNX from nvidia-modelopt's ONNX quantizer (host side,
no TensorRT needed). The scales are explicit Q/DQ nodes, so no INT8 calibration cache is needed on the
device, and the same file serves TensorRT 10 (weakly typed, INT8 flag) and 11 (strongly typed)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from pipeline.backends.onnxruntime import (check_calibration, check_node_names, cpu_session, input_dtypes, io_shapes,
                                           load_onnx, ort_module, qdq_summary)
from pipeline.backends.tensorrt.compat import DEFAULT_TRT_VERSION, check_compat, qdq_nodes
from pipeline.errors import UserError
from pipeline.hashing import sha256_file

MODELOPT_METHODS = {"minmax": "max", "max": "max", "entropy": "entropy"}


# modelopt patches onnxruntime.quantization in place (its calibrators and QDQ registry), after which
# onnxruntime's own quantize_static fails in the same process; so modelopt runs in a fresh Python.
# Its output (including a harmless "NVML Shared Library Not Found" on GPU-less hosts) is captured.
_MODELOPT_CHILD = """
import json, sys
import numpy as np
from modelopt.onnx.quantization import quantize
a = json.loads(sys.argv[1])
z = np.load(a["calib"])
data = z[z.files[0]] if len(z.files) == 1 else {k: z[k] for k in z.files}
quantize(a["onnx_in"], quantize_mode="int8", calibration_data=data,
         calibration_method=a["method"], calibration_eps=["cpu"], nodes_to_exclude=a["exclude"] or None,
         high_precision_dtype=a["high_precision_dtype"], output_path=a["onnx_out"], log_level="WARNING")
"""


def _run_modelopt(onnx_in: Path, calib: dict[str, np.ndarray], onnx_out: Path, method: str, exclude_patterns: list[str],
                  high_precision_dtype: str) -> None:
    """modelopt.onnx.quantization.quantize(quantize_mode="int8", ...) in a child process."""
    # scratch next to the output (inside the run folder), never in the system temp folder
    with tempfile.TemporaryDirectory(prefix=".modelopt.", dir=Path(onnx_out).parent) as tmp:
        np.savez(Path(tmp) / "calib.npz", **calib)      # one array per model input (a dict for modelopt)
        args = {"onnx_in": str(onnx_in), "calib": str(Path(tmp) / "calib.npz"), "onnx_out": str(onnx_out),
                "method": method, "exclude": exclude_patterns, "high_precision_dtype": high_precision_dtype}
        proc = subprocess.run([sys.executable, "-c", _MODELOPT_CHILD, json.dumps(args)],
                              capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"modelopt INT8 quantization failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


FP16_MIN_NORMAL = 2.0 ** -14       # 6.1e-5: below it fp16 is subnormal (fewer bits); below 2**-24 it is 0


def fp16_scale_underflow(model) -> str | None:
    """Why the fp16 graph's Q/DQ scales cannot be trusted, or None: modelopt's fp16 "high precision"
    graph stores the scales in fp16, and a real network's per-channel weight scales can fall below
    fp16's normal range (an ImageNet EfficientNet-Lite0 had scales flushed to 5.96e-8, and its INT8
    QDQ agreed with the teacher on 0% of images). Checked on every Q/DQ node's scale initializer."""
    inits = {i.name: i for i in model.graph.initializer}
    bad, smallest = 0, None
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 1 and n.input[1] in inits:
            t = inits[n.input[1]]
            if t.data_type != onnx.TensorProto.FLOAT16:
                continue
            v = np.abs(numpy_helper.to_array(t).astype(np.float32))
            low = v < FP16_MIN_NORMAL
            if low.any():
                bad += int(low.sum())
                smallest = float(v.min()) if smallest is None else min(smallest, float(v.min()))
    if not bad:
        return None
    return (f"stores {bad} Q/DQ scale(s) below fp16's normal range {FP16_MIN_NORMAL:.3g} (smallest {smallest:.3g}): "
            "they lose precision or flush to zero")


def quantize_int8(onnx_in: Path, calib, onnx_out: Path, method: str = "entropy",
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
    calib = check_calibration(calib, shapes["inputs"], input_dtypes(model))
    input_shape = next(iter(shapes["inputs"].values()))
    batch = input_shape[0] if isinstance(input_shape[0], int) else 1
    n = len(next(iter(calib.values())))
    if n < batch:
        raise UserError(f"{n} calibration samples for a model with a fixed batch of {batch}",
                        f"give at least {batch} calibration samples")
    calib = {k: v[: n - n % batch] for k, v in calib.items()}
    first = {k: v[:batch] for k, v in calib.items()}
    excluded = check_node_names(model, exclude_nodes)
    onnx_out = Path(onnx_out)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)

    patterns = [f"^{re.escape(n)}$" for n in excluded]     # modelopt matches names as regular expressions
    args = (Path(onnx_in), calib, onnx_out, MODELOPT_METHODS[method], patterns)
    precision = "fp16" if fp16_fallback else "fp32"
    fp16_note = "fp16 graph runs in ONNX Runtime CPU" if fp16_fallback else "fp32 requested"
    _run_modelopt(*args, precision)
    tiny = fp16_scale_underflow(onnx.load(str(onnx_out))) if precision == "fp16" else None
    try:
        if tiny:       # an fp16 Q/DQ scale below fp16's normal range loses its precision or flushes to zero
            raise ValueError(tiny)
        cpu_session(str(onnx_out)).run(None, first)
    except Exception as e:  # noqa: BLE001 -- any ORT failure on the fp16 graph triggers the fp32 fallback
        if precision == "fp32":
            raise
        fp16_note = (f"fp16 graph {tiny}" if tiny else f"fp16 graph failed in ONNX Runtime CPU ({e.__class__.__name__})") + \
            "; kept fp32 in the ONNX, TensorRT picks fp16 kernels through the FP16 builder flag"
        precision = "fp32"
        _run_modelopt(*args, precision)
        cpu_session(str(onnx_out)).run(None, first)

    quantized = onnx.load(str(onnx_out))
    qdq = qdq_nodes(quantized)
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
        "n_calibration": len(next(iter(calib.values()))),
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
