#!/usr/bin/env python3
"""Build, check and time the TensorRT engine ON the device (edge-compress; the device half of the
TensorRT engine). Shipped verbatim in the hand-off bundle as build_engine.py, next to hashing.py,
devicekit.py and build_engine.json (the defaults this bundle was prepared with); the build host's
`python -m pipeline bench` runs the same functions.

Needs only tensorrt, numpy, and torch (with CUDA) or cuda-python. Builds the engine from the QDQ ONNX
with the TensorRT Python API (10.x: weakly typed with INT8/FP16 builder flags, as on JetPack 6's
TensorRT 10.3; 11.x: strongly typed, precision from the graph), runs the golden inputs (npz: x, y)
through it, compares with the expected outputs, times it with CUDA events and writes a JSON device
report. The INT8 scales are explicit Q/DQ nodes in the ONNX: no INT8 calibration cache is needed.

    python3 build_engine.py            # defaults from build_engine.json; --help for options

Exit code: 0 check passed, 1 check failed, 2 build/run error.

API used: trt.Builder / create_network (STRONGLY_TYPED where asked or required) / OnnxParser.
parse_from_file, IBuilderConfig.set_memory_pool_limit, BuilderFlag.INT8/FP16 (10.x only) /
GPU_FALLBACK, create_timing_cache / set_timing_cache / get_timing_cache, IOptimizationProfile.
set_shape, default_device_type / DLA_core, build_serialized_network, IEngineInspector.
get_engine_information(LayerInformationFormat.JSON), IExecutionContext set_input_shape /
set_tensor_address / execute_async_v3. Not run on a GPU by this project's CI: see the README.
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

try:
    from pipeline.bundle.devicekit import device_latency, device_report, golden_check, golden_inputs
    from pipeline.hashing import sha256_file
except ImportError:          # inside a hand-off bundle: the kit sits next to this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from devicekit import device_latency, device_report, golden_check, golden_inputs
    from hashing import sha256_file

DEFAULTS_FILE = "build_engine.json"


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
               min_opt_max_batch: tuple[int, int, int] | None = None, strongly_typed: bool = False,
               profiles: dict | None = None) -> dict:
    """Build a serialized TensorRT engine from an ONNX file and describe it (layers, precisions).

    `profiles` {input: [min, opt, max] shapes} is the optimization profile of dynamic inputs (the
    run's --dynamic axes); `min_opt_max_batch` is the older batch-only form.

    TensorRT 10.x: a weakly typed network with the INT8 (and FP16) builder flags, unless
    `strongly_typed`; TensorRT 11.x: always strongly typed (the flags no longer exist)."""
    import tensorrt as trt

    log = _trt_logger(trt)
    builder = trt.Builder(log)
    major = int(trt.__version__.split(".")[0])
    # TensorRT 11 removed BuilderFlag.INT8/FP16 (weak typing): networks are strongly typed and precision
    # comes from the QDQ ONNX itself (its Q/DQ nodes and float16/float32 tensors). 10.x keeps the flags.
    typed = strongly_typed or major >= 11 or not hasattr(trt.BuilderFlag, "INT8")
    flags = 0
    if major < 10:     # before TensorRT 10 implicit batch was the default
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
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
    if not typed:
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
    if profiles:
        profile = builder.create_optimization_profile()
        missing = [inp.name for inp in inputs if any(d < 0 for d in inp.shape) and inp.name not in profiles]
        if missing:
            raise DeviceError(f"dynamic input(s) {missing} have no optimization profile (profiles name {sorted(profiles)})")
        for inp in inputs:
            if inp.name in profiles:
                lo, opt, hi = (tuple(int(d) for d in s) for s in profiles[inp.name])
                profile.set_shape(inp.name, lo, opt, hi)
        config.add_optimization_profile(profile)
        profile_meta = {n: {"min": list(v[0]), "opt": list(v[1]), "max": list(v[2])} for n, v in profiles.items()}
    elif min_opt_max_batch is not None:
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
        if not (int8 or fp16 or typed):
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
        "flags": {"int8": int8 and not typed, "fp16": fp16 and not typed},
        "typing": "strong (precision from the ONNX graph)" if typed else "weak (INT8/FP16 builder flags)",
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

    def alloc(self, shape: tuple, dtype=np.float32) -> tuple[Any, int]:
        buf = self.torch.empty(tuple(shape), dtype=self.torch.from_numpy(np.zeros(0, dtype)).dtype, device="cuda")
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

    def alloc(self, shape: tuple, dtype=np.float32) -> tuple[Any, int]:
        ptr = self._call(self.rt.cudaMalloc(max(1, int(np.prod(shape))) * np.dtype(dtype).itemsize))
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
    """Deserialize a plan and run it: inputs by name (float32 images/features, int32/int64 token ids as
    the engine declares), float32 logits out, CUDA-event timing. A single-input engine also takes a
    bare array. Dynamic dims (the bundle's optimization profile) take the size of the arrays given."""

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
        if not ins or len(outs) != 1:
            raise DeviceError(f"the engine has inputs {ins} and outputs {outs}; one output is supported")
        if self.engine.get_tensor_dtype(outs[0]) != trt.DataType.FLOAT:
            raise DeviceError("the engine's output is not float32")
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in ins}
        self.shapes = {n: tuple(self.engine.get_tensor_shape(n)) for n in ins}
        self.input_names, self.input_name, self.output_name = ins, ins[0], outs[0]
        shape = self.shapes[self.input_name]
        self.dynamic = shape[0] == -1
        self.max_batch = self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0] if self.dynamic else shape[0]
        self.sample_shape = shape[1:]
        self.mem = _cuda_memory()
        self._bound: tuple | None = None

    def _feed(self, x) -> dict[str, np.ndarray]:
        feed = x if isinstance(x, dict) else {self.input_name: x}
        missing = [n for n in self.input_names if n not in feed]
        if missing or len(feed) != len(self.input_names):
            raise DeviceError(f"the engine takes inputs {self.input_names}, got {sorted(feed)}")
        out = {}
        for n in self.input_names:
            a = np.asarray(feed[n])
            want = self.shapes[n]
            if a.ndim != len(want) or any(w >= 0 and w != g for w, g in zip(want[1:], a.shape[1:])):
                raise DeviceError(f"input '{n}' has shape {tuple(a.shape)}, the engine expects {want} (-1: dynamic)")
            out[n] = np.ascontiguousarray(a, dtype=self.dtypes[n])
        return out

    def _bind(self, feed: dict[str, np.ndarray]) -> tuple:
        key = tuple((n, a.shape) for n, a in feed.items())
        if self._bound is None or self._bound[0] != key:
            if self._bound is not None:
                for buf in (*self._bound[1].values(), self._bound[2]):
                    self.mem.free(buf)
            bufs = {}
            for n, a in feed.items():
                if not self.context.set_input_shape(n, a.shape):
                    raise DeviceError(f"the engine's profile does not accept input '{n}' of shape {tuple(a.shape)}")
                bufs[n], ptr = self.mem.alloc(a.shape, a.dtype)
                self.context.set_tensor_address(n, ptr)
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            out_buf, out_ptr = self.mem.alloc(out_shape)
            self.context.set_tensor_address(self.output_name, out_ptr)
            self._bound = (key, bufs, out_buf, out_shape)
        return self._bound

    def _upload(self, feed: dict[str, np.ndarray]) -> tuple:
        bound = self._bind(feed)
        for n, a in feed.items():
            self.mem.h2d(bound[1][n], a)
        return bound

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.mem.handle):
            raise DeviceError(f"execute_async_v3 failed: {self.log.errors()}")

    def infer(self, x) -> np.ndarray:
        """One execution on a batch the engine accepts (an array, or {input name: array})."""
        _, _, out_buf, out_shape = self._upload(self._feed(x))
        self._execute()
        return self.mem.d2h(out_buf, out_shape)

    def run(self, x) -> np.ndarray:
        """Logits for any number of samples, in batches the engine accepts."""
        feed = self._feed(x)
        n = len(next(iter(feed.values())))
        if not self.dynamic and n % self.max_batch:
            raise DeviceError(f"{n} samples for an engine with a fixed batch of {self.max_batch}")
        return np.concatenate([self.infer({k: v[i:i + self.max_batch] for k, v in feed.items()})
                               for i in range(0, n, self.max_batch)])

    def time(self, x, warmup: int, runs: int) -> list[float]:
        """GPU time (ms, CUDA events around execute_async_v3) of `runs` executions on one batch of x;
        the batch is the engine's fixed batch, or all of x for a dynamic engine. Copies are not timed."""
        feed = self._feed(x)
        if not self.dynamic:
            feed = {k: v[: self.max_batch] for k, v in feed.items()}
        self._upload(feed)
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


def main(argv: list[str] | None = None) -> int:
    """build_engine.py: build the plan, check it against golden samples, time it, write a JSON report."""
    import argparse

    d = json.loads((Path(__file__).parent / DEFAULTS_FILE).read_text())
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
    ap.add_argument("--strongly-typed", action=argparse.BooleanOptionalAction, default=d.get("strongly_typed", False),
                    help="TensorRT 10: build strongly typed (precision from the ONNX); 11 always does")
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
                min_opt_max_batch=tuple(args.min_opt_max_batch) if args.min_opt_max_batch else None,
                strongly_typed=args.strongly_typed, profiles=None if args.min_opt_max_batch != d["min_opt_max_batch"]
                else d.get("profiles"))
        runner = TrtRunner(args.plan)
        report["runtime"]["cuda_binding"] = runner.mem.name
        report["engine"] = {"file": Path(args.plan).name, "sha256": sha256_file(args.plan), "built_here": not args.skip_build}
        report["layer_precisions"] = dict(Counter(layer["precision"] for layer in _engine_layers(tensorrt, runner.engine)))
        golden = np.load(args.golden)
        x = golden_inputs(golden)
        det = json.loads((Path(args.golden).parent / "manifest.json").read_text()).get("detection") \
            if (Path(args.golden).parent / "manifest.json").is_file() else None      # a detector: boxes are checked
        report["check"] = golden_check(runner.run(x), golden["y"], golden["labels"] if "labels" in golden.files else None,
                                       args.atol, args.rtol, args.min_top1_agreement,
                                       golden["boxes"] if "boxes" in golden.files else None, det)
        n = 1 if runner.dynamic else runner.max_batch                  # the engine's batch; 1 if dynamic
        batch = {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]
        times = runner.time(batch, args.warmup, args.runs)
        report["latency_ms"] = device_latency(times, args.warmup, n,
                                              "GPU time of execute_async_v3 between CUDA events, copies excluded")
    except (DeviceError, OSError, KeyError) as e:     # build/run problems, a missing file or npz key
        report["error"] = f"{e.__class__.__name__}: {e}"
        print(f"error: {e}", file=sys.stderr)
    Path(args.report).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "build"} | {"report": args.report}, indent=2))
    if "error" in report:
        return 2
    return 0 if report["check"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
