"""ONNX Runtime backend: FP32 ONNX export, INT8 QDQ post-training quantization, CPU inference.

ONNX Runtime is imported only inside the functions that need it, so importing this module never
fails; `available()` says whether the engine is there. The exported graph is the hand-off format of
every later stage: one input named "input" (normalized float32 NCHW), one output named "logits".
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import onnx

from pipeline.backends import base
from pipeline.errors import UserError
from pipeline.hashing import sha256_file

if TYPE_CHECKING:
    import torch

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


# ---------------------------------------------------------------- engine
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


def check_calibration(calib: np.ndarray, input_shape: Sequence[int | str]) -> np.ndarray:
    """Validate calibration data against the model input and return it as contiguous float32 NCHW."""
    if not isinstance(calib, np.ndarray) or calib.ndim != len(input_shape):
        got = calib.shape if isinstance(calib, np.ndarray) else type(calib).__name__
        raise UserError(f"calibration data has shape {got}, the model input is {tuple(input_shape)}",
                        "pass normalized float32 images as one (N, C, H, W) array")
    if len(calib) == 0:
        raise UserError("the calibration set is empty", "give at least one calibration image (a few hundred is typical)")
    want, got = tuple(input_shape[1:]), tuple(calib.shape[1:])
    if any(isinstance(w, int) and w != g for w, g in zip(want, got)):
        raise UserError(f"calibration images have shape {got}, the model expects {want}",
                        "calibrate with images of the model's input shape (same size and channels)")
    if not np.issubdtype(calib.dtype, np.floating):
        raise UserError(f"calibration data is {calib.dtype}, expected normalized float32",
                        "normalize the images first (Dataset.normalize)")
    calib = np.ascontiguousarray(calib, dtype=np.float32)
    if not np.isfinite(calib).all():
        raise UserError("calibration data contains NaN or infinite values", "drop or fix those samples")
    return calib


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


# ---------------------------------------------------------------- export
def export_onnx(model: "torch.nn.Module", example: "torch.Tensor", out_path: Path, opset: int = 17,
                dynamic_batch: bool = False) -> dict:
    """Export `model` to a simplified FP32 ONNX file with input "input" and output "logits".

    Uses the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`): it emits the requested
    opset (the dynamo exporter starts at 18), folds BatchNorm into Conv, keeps GlobalAveragePool,
    and writes byte-identical files for the same model. onnxslim then removes Identity nodes and
    folds constants. The shape is static (from `example`) unless `dynamic_batch`, which names the
    batch dimension "batch". The exported graph is run once in ONNX Runtime against PyTorch.
    """
    import onnxslim
    import torch

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"ONNX opset {opset} is not supported", f"use an opset from {MIN_OPSET} to {MAX_OPSET}")
    if not isinstance(example, torch.Tensor) or example.dtype != torch.float32:
        raise UserError("the export example must be a float32 torch.Tensor",
                        "pass one normalized input batch, e.g. torch.zeros(1, 1, 28, 28)")
    example = example.detach().cpu()
    was_training = model.training
    model.eval()
    buf = io.BytesIO()
    try:
        with torch.no_grad():
            reference = model(example)
            if not isinstance(reference, torch.Tensor):
                raise UserError(f"the model returns {type(reference).__name__}, not one tensor",
                                "export a model whose forward returns the logits tensor only")
            with warnings.catch_warnings():
                # The TorchScript exporter is chosen on purpose (see the docstring); silence its notice.
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                # nn.MultiheadAttention's eval fast path (aten::_native_multi_head_attention) has no ONNX
                # symbolic; the plain path exports.
                fastpath = torch.backends.mha.get_fastpath_enabled()
                torch.backends.mha.set_fastpath_enabled(False)
                try:
                    torch.onnx.export(
                        model, (example,), buf, dynamo=False, opset_version=opset, do_constant_folding=True,
                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None,
                    )
                finally:
                    torch.backends.mha.set_fastpath_enabled(fastpath)
    finally:
        model.train(was_training)

    slim = onnxslim.slim(onnx.load_from_string(buf.getvalue()))
    onnx.checker.check_model(slim, full_check=True)
    data = slim.SerializeToString(deterministic=True)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(data)

    got = cpu_session(data).run([OUTPUT_NAME], {INPUT_NAME: example.numpy()})[0]
    shapes = io_shapes(slim)
    return {
        "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
        "torch": torch.__version__,
        "simplifier": f"onnxslim {onnxslim.__version__}",
        "opset": opset,
        "input": {"name": INPUT_NAME, "shape": list(shapes["inputs"][INPUT_NAME])},
        "output": {"name": OUTPUT_NAME, "shape": list(shapes["outputs"][OUTPUT_NAME])},
        "dynamic_batch": dynamic_batch,
        "n_nodes": len(slim.graph.node),
        "op_types": dict(sorted(Counter(n.op_type for n in slim.graph.node).items())),
        "bytes": len(data),
        "sha256": sha256_file(out_path),
        "max_abs_diff_vs_torch": float(np.abs(got - reference.numpy()).max()),
    }


# ---------------------------------------------------------------- quantize
class _NoPreprocessHint(logging.Filter):
    """quantize_static logs "Please consider to run pre-processing" through the root logger on every
    call. The hint is about its shape inference on raw exports; export_onnx's graphs are already
    optimized, so the line is noise in every run log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()


class _ArrayReader:
    """onnxruntime CalibrationDataReader over an array, in batches the model accepts."""

    def __init__(self, calib: np.ndarray, batch: int | None):
        step = batch or 32
        self._batches = iter([{INPUT_NAME: calib[i:i + step]} for i in range(0, len(calib) - (batch or 1) + 1, step)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(onnx_in: Path, calib: np.ndarray, onnx_out: Path, method: str = "minmax",
                  per_channel: bool = True, exclude_nodes: Sequence[str] = (),
                  activation_symmetric: bool = False) -> dict:
    """Static INT8 post-training quantization to a QDQ ONNX model for ONNX Runtime CPU.

    Weights: int8, symmetric, per output channel (when `per_channel`). Activations: see
    ACTIVATION_TYPE. `method` picks the calibration (minmax | percentile | entropy); `calib` is
    normalized float32 NCHW. Nodes named in `exclude_nodes` stay in float.
    """
    ort = ort_module()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise UserError(f"unknown calibration method '{method}'", f"use one of {', '.join(CALIBRATION_METHODS)}")
    model = load_onnx(onnx_in)
    shapes = io_shapes(model)
    if INPUT_NAME not in shapes["inputs"] or len(shapes["inputs"]) != 1:
        raise UserError(f"{onnx_in} has inputs {list(shapes['inputs'])}, expected one named '{INPUT_NAME}'",
                        "quantize a model written by export_onnx")
    input_shape = shapes["inputs"][INPUT_NAME]
    calib = check_calibration(calib, input_shape)
    batch = input_shape[0] if isinstance(input_shape[0], int) else None
    if batch is not None and len(calib) < batch:
        raise UserError(f"{len(calib)} calibration images for a model with a fixed batch of {batch}",
                        f"give at least {batch} calibration images")
    excluded = check_node_names(model, exclude_nodes)

    onnx_out = Path(onnx_out)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    hint_filter = _NoPreprocessHint()
    logging.getLogger().addFilter(hint_filter)
    try:
        with contextlib.redirect_stdout(io.StringIO()):     # the histogram calibrators print progress lines
            quantize_static(
                str(onnx_in), str(onnx_out), _ArrayReader(calib, batch),
                quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=getattr(QuantType, ACTIVATION_TYPE), weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                                  "entropy": CalibrationMethod.Entropy}[method],
                extra_options={"ActivationSymmetric": activation_symmetric, "WeightSymmetric": True,
                               "CalibPercentile": PERCENTILE},
            )
    finally:
        logging.getLogger().removeFilter(hint_filter)
    quantized = onnx.load(str(onnx_out))
    cpu_session(str(onnx_out))  # it must load in ONNX Runtime CPU
    return {
        "method": method,
        **({"percentile": PERCENTILE} if method == "percentile" else {}),
        **({"note": ENTROPY_NOTE} if method == "entropy" else {}),
        "format": "QDQ",
        "activation_type": ACTIVATION_TYPE,
        "activation_type_reason": ACTIVATION_TYPE_REASON,
        "activation_symmetric": activation_symmetric,
        "weight_type": "QInt8",
        "per_channel": per_channel,
        "n_calibration": len(calib),
        "excluded": excluded,
        **qdq_summary(quantized),
        "onnxruntime": ort.__version__,
        "bytes": onnx_out.stat().st_size,
        "sha256": sha256_file(onnx_out),
    }


# ---------------------------------------------------------------- run
class Runner(base.Runner):
    """An ONNX Runtime CPU session over one model; input normalized float32 NCHW, output logits."""

    layout = "NCHW"

    def __init__(self, path: Path, threads: int = 2, opt_level: str = "all"):
        ort = ort_module()
        if opt_level not in OPT_LEVELS:
            raise UserError(f"unknown graph optimization level '{opt_level}'", f"use one of {', '.join(OPT_LEVELS)}")
        if threads < 1:
            raise UserError(f"threads must be at least 1, got {threads}", "pass --threads 1 or more")
        path = Path(path)
        if not path.is_file():
            raise UserError(f"ONNX model not found: {path}", "pass the path of an existing .onnx file")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{opt_level.upper()}"
                                              if opt_level != "disable" else "ORT_DISABLE_ALL")
        try:
            self.session = cpu_session(str(path), so)
        except Exception as e:  # noqa: BLE001 -- ORT raises several types for an unloadable model
            raise UserError(f"ONNX Runtime cannot load {path}: {e}", "re-export the model (export_onnx)") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"{path} has {len(inputs)} inputs and {len(outputs)} outputs",
                            "run a model with one image input and one logits output")
        self.path = path
        self.threads = threads
        self.opt_level = opt_level
        self.input_name: str = inputs[0].name
        self.output_name: str = outputs[0].name
        self.input_shape: tuple = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        self._fixed_batch: int | None = self.input_shape[0]

    def _check(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.ndim != len(self.input_shape):
            got = x.shape if isinstance(x, np.ndarray) else type(x).__name__
            raise UserError(f"input has shape {got}, {self.path.name} expects {self.input_shape}",
                            "pass normalized float32 NCHW images")
        if any(w is not None and w != g for w, g in zip(self.input_shape[1:], x.shape[1:])):
            raise UserError(f"input images have shape {x.shape[1:]}, {self.path.name} expects {self.input_shape[1:]}",
                            "resize the images to the model's input shape")
        return np.ascontiguousarray(x, dtype=np.float32)

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """One inference's input, checked and contiguous float32: the first `batch` images of x."""
        x = self._check(x)
        return x[: self._fixed_batch or 1]

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        """One session.run on an input from `prepare` (no checks: for timing loops)."""
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits (float32) for any number of images; a fixed-batch model is run batch by batch."""
        x = self._check(x)
        step = self._fixed_batch or 256
        if self._fixed_batch and len(x) % self._fixed_batch:
            raise UserError(f"{len(x)} images for a model with a fixed batch of {self._fixed_batch}",
                            f"pass a multiple of {self._fixed_batch} images")
        out = [self.run_raw(x[i:i + step]) for i in range(0, len(x), step)]
        return np.concatenate(out).astype(np.float32, copy=False)


# ---------------------------------------------------------------- the engine
def onnx_quantizer(job: base.QuantizeJob, build, proxy_method: str, symmetric: bool, note: str) -> base.Quantizer:
    """A Quantizer for engines whose INT8 artifact is made from the float ONNX (ONNX Runtime, TensorRT):
    references and held-out outputs from ONNX Runtime, the sensitivity proxy from its quantize_static.
    `build(onnx_in, float_layers)` writes job.dest."""
    t = job.target
    reference = Runner(job.onnx_source, threads=t.threads).run(job.held_x)
    onnx_in = job.onnx_source
    if job.prepared is not None or (job.dynamic_batch and job.to_quantize is not None):
        onnx_in = job.tmp / "to-quantize.onnx"
        export_onnx(job.to_quantize, job.example, onnx_in, dynamic_batch=job.dynamic_batch)
    elif job.dynamic_batch and isinstance(io_shapes(load_onnx(job.onnx_source))["inputs"][INPUT_NAME][0], int):
        raise UserError(f"target '{t.name}' asks for a dynamic batch (max_batch > 1), but {job.model_name} has a "
                        "fixed batch dim", "re-export the ONNX with a dynamic batch axis, or set max_batch = 1")

    def logits(path: Path) -> np.ndarray:
        return Runner(path, threads=t.threads).run(job.held_x)

    def proxy(float_layers: Sequence[str]) -> np.ndarray:
        quantize_int8(onnx_in, job.calib, job.tmp / "sensitivity.onnx", method=proxy_method,
                      exclude_nodes=float_layers, activation_symmetric=symmetric, per_channel=job.per_channel)
        return logits(job.tmp / "sensitivity.onnx")

    from pipeline.compress.sensitivity import onnx_layers
    return base.Quantizer(onnx_layers(onnx_in), reference, lambda float_layers: build(onnx_in, float_layers),
                          logits, proxy, note, job.prepared)


class OnnxRuntime(base.Engine):
    """ONNX Runtime on the CPU: INT8 QDQ ONNX from quantize_static; FP32 and INT8 shipped, `auto` picks."""

    name = "onnxruntime"
    install_hint = "pip install -r requirements.txt (onnxruntime)"
    int8_file = "model.int8.onnx"
    Runner = Runner
    host_runtime = "onnxruntime"
    runtime_packages = ("onnxruntime",)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return available()

    def quantizer(self, job: base.QuantizeJob) -> base.Quantizer:
        def build(onnx_in: Path, float_layers: Sequence[str]) -> dict:
            return quantize_int8(onnx_in, job.calib, job.dest, method=job.method, exclude_nodes=float_layers,
                                 per_channel=job.per_channel)
        return onnx_quantizer(job, build, job.method, False,
                              "the target's own quantizer (onnxruntime quantize_static, exclude_nodes)")

    def compile(self, job: base.CompileJob) -> dict:
        import shutil
        t = job.target
        shutil.copyfile(job.int8, job.out / self.int8_file)
        shutil.copyfile(job.float_onnx, job.out / "model.fp32.onnx")
        candidates = {"int8": self.int8_file, "fp32": "model.fp32.onnx"}
        return base.choice_metrics(self, t, "ONNX", candidates, *job.choose(self, candidates))

    def bench(self, tdir: Path, manifest: dict, warmup: int, runs: int, threads: int) -> dict:
        from pipeline.device import cpu_bench
        return cpu_bench(self, tdir, manifest, warmup, runs, threads)
