"""TensorRT engine (NVIDIA GPUs and Jetsons): explicit-quantization (QDQ) INT8 ONNX, a static
compatibility check, the on-device build bundle, and engine build/run where TensorRT and a GPU exist.

TensorRT engines are specific to the GPU and TensorRT version that build them, so for an edge target
the engine is built ON the device. The work is split by what it does:

* `compat.py`: TensorRT's ONNX parser rules (10.x and 11.x), checked statically here;
* `modelopt_qdq.py`: the QDQ INT8 ONNX from nvidia-modelopt (host side);
* `pipeline/bundle/build_engine.py`: the device half (build, run, time: TensorRT 10 weakly typed with
  INT8/FP16 flags, TensorRT 11 strongly typed), a real file that the bundle ships verbatim;
* `bundle.py`: the bundle's build_engine.sh (trtexec) and build_engine.json;
* this module: the engine type the stages use, and its Runner over a plan on this machine's GPU.

Written against TensorRT 10.3 (JetPack 6) and 11.x; neither was run by this project (no TensorRT where
it is built): the host half is tested, the device half is checked for conformance and syntax.
"""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.backends import base
from pipeline.backends.onnxruntime import INPUT_NAME, load_onnx, onnx_quantizer
from pipeline.backends.tensorrt.bundle import BUILD_OPTS, build_script, device_files
from pipeline.backends.tensorrt.compat import DEFAULT_TRT_VERSION, check_compat, strongly_typed  # noqa: F401
from pipeline.backends.tensorrt.modelopt_qdq import quantize_int8  # noqa: F401
from pipeline.bundle.build_engine import DeviceError, TrtRunner, _engine_layers, build_plan
from pipeline.errors import UserError

PLAN = "model.plan"
PROXY_NOTE = ("ONNX Runtime's QDQ quantizer with symmetric int8 activations and weights (minmax for entropy), a "
              "proxy for modelopt, which costs ~10 s per run; fallback steps re-quantize with modelopt")
GPU_WHAT = "GPU time of execute_async_v3 between CUDA events, copies excluded"
NOTES = """
## Building the TensorRT engine ON the device
TensorRT engines are specific to the GPU and TensorRT version that built them, so the engine is built
on the {device} itself (expected: TensorRT {trt}, JetPack {jetpack}):

    ./build_engine.sh                      # trtexec: builds model.plan, prints timings
    python3 build_engine.py --onnx {onnx} --golden golden.npz --report device_report.json

`build_engine.py` needs only TensorRT, numpy and (for timing) cuda-python or torch; it builds the
engine (TensorRT 10: INT8/FP16 builder flags; TensorRT 11: strongly typed, precision from the ONNX),
checks its outputs against golden.npz and writes a device report with p50/p90/p99 latency. The INT8
scales are explicit Q/DQ nodes in the ONNX, so no INT8 calibration cache is needed on the device.
The figures in the host report for this target are host figures of the QDQ ONNX in ONNX Runtime.
"""


def _gpu_count() -> tuple[int, str]:
    """(number of CUDA devices, how it was found) through torch.cuda or cuda-python."""
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.device_count(), "torch.cuda"
    except ImportError:
        pass
    try:
        from pipeline.bundle.build_engine import _cudart
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
    except ImportError:
        return False, "the tensorrt Python package is not installed here"
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



def build_engine(onnx_path: Path, plan_path: Path, *, int8: bool = True, fp16: bool = True, workspace_mb: int = 1024,
                 timing_cache: Path | None = None, dla_core: int | None = None, gpu_fallback: bool = True,
                 min_opt_max_batch: tuple[int, int, int] | None = None, strongly_typed: bool = False,
                 profiles: dict | None = None) -> dict:
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
                          gpu_fallback=gpu_fallback, min_opt_max_batch=min_opt_max_batch,
                          strongly_typed=strongly_typed, profiles=profiles)
    except DeviceError as e:
        raise UserError(str(e), "run check_compat on the ONNX and fix what it reports, or change the build options") from None


class Runner(base.Runner):
    """Run a TensorRT plan on this machine's GPU (torch.cuda or cuda-python memory)."""

    layout = "NCHW"

    def __init__(self, path: Path, threads: int = 2):
        _require()
        plan_path = Path(path)
        if not plan_path.is_file():
            raise UserError(f"TensorRT engine not found: {plan_path}", "build it first (build_engine)")
        try:
            self._runner = TrtRunner(str(plan_path))
        except DeviceError as e:
            raise UserError(str(e), "rebuild the engine on this machine with build_engine") from None
        self.input_name = self._runner.input_name
        self.output_name = self._runner.output_name
        self.input_shape = (None if self._runner.dynamic else self._runner.max_batch, *self._runner.sample_shape)

    def io(self) -> dict:
        r = self._runner
        return {"inputs": [{"name": n, "shape": [d if d >= 0 else None for d in r.shapes[n]], "dtype": r.dtypes[n].name,
                            "layout": self.layout if len(r.shapes[n]) == 4 else None} for n in r.input_names],
                "outputs": [{"name": self.output_name, "dtype": "float32"}]}

    @staticmethod
    def _arrays(x):
        """Normalized inputs as the device runner takes them: one array, or {input name: array}."""
        if isinstance(x, np.ndarray):
            return x
        arrays = dict(x.items())
        return next(iter(arrays.values())) if len(arrays) == 1 else arrays

    def prepare(self, x):
        """One engine batch of x (its fixed batch, or one sample for a dynamic engine), by input name."""
        n = self.input_shape[0] or 1
        a = self._arrays(x)
        return {k: v[:n] for k, v in a.items()} if isinstance(a, dict) else a[:n]

    def run_raw(self, x) -> np.ndarray:
        """One execution on a prepared batch (copies included)."""
        return self._runner.infer(x)

    def run(self, x) -> np.ndarray:
        """float32 logits for normalized inputs (any count; run in engine batches)."""
        try:
            return self._runner.run(self._arrays(x))
        except DeviceError as e:
            raise UserError(str(e), "pass normalized inputs of the engine's input shapes") from None

    def layer_precisions(self) -> dict[str, int]:
        """How many engine layers run in each precision (IEngineInspector; detailed only for engines
        built with detailed profiling verbosity, as build_engine and build_engine.sh do)."""
        import tensorrt as trt
        return dict(Counter(layer["precision"] for layer in _engine_layers(trt, self._runner.engine)))

    def time(self, x: np.ndarray, warmup: int, runs: int) -> list[float]:
        """ms per run from CUDA events around execute_async_v3 (one engine batch of x; copies excluded)."""
        try:
            return self._runner.time(self._arrays(x), warmup, runs)
        except DeviceError as e:
            raise UserError(str(e), "pass a batch the engine accepts") from None


class TensorRT(base.Engine):
    """TensorRT on an NVIDIA GPU or Jetson: the QDQ ONNX is the deliverable, the engine is built on the device."""

    name = "tensorrt"
    install_hint = "run on a machine with an NVIDIA GPU and TensorRT (JetPack on a Jetson)"
    int8_file = "model.int8.qdq.onnx"
    Runner = Runner
    host_runtime = "onnxruntime"      # the QDQ ONNX runs in ONNX Runtime here: the host proxy of its numerics
    precisions = ("int8",)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return available()

    def complete_target(self, target) -> None:
        from pipeline.config import TensorRTOptions
        if target.tensorrt is None:
            target.tensorrt = TensorRTOptions()

    def check_target(self, target, quantize_cfg) -> None:
        if quantize_cfg is not None and not quantize_cfg.per_channel:
            raise UserError(f"quantize.per_channel=false: target '{target.name}' (TensorRT) is quantized by modelopt "
                            "with per-channel weights only", "drop the setting for TensorRT targets")

    def dynamic_batch(self, target) -> bool:
        return target.tensorrt.max_batch > 1

    def float_precision(self, target) -> str:
        return "fp16" if target.tensorrt.fp16_fallback else "fp32"

    def quantizer(self, job: base.QuantizeJob) -> base.Quantizer:
        t = job.target

        def build(onnx_in: Path, float_layers: Sequence[str]) -> dict:
            return quantize_int8(onnx_in, job.calib, job.dest, method=job.method, exclude_nodes=float_layers,
                                 fp16_fallback=t.tensorrt.fp16_fallback)
        return onnx_quantizer(job, build, "minmax" if job.method == "entropy" else job.method, True, PROXY_NOTE)

    def build_options(self, target, input_shape: list[int], input_shapes: dict | None = None, dynamic=None) -> dict:
        """The engine build options of this target (bundle scripts, bench and a local build use the same).
        Optimization profile: the run's --dynamic axes (min/opt/max shape per input), else batch
        1..max_batch when the target asks for it, else none (static shapes)."""
        trt = target.tensorrt
        shapes = input_shapes or {INPUT_NAME: [1, *input_shape[1:]]}
        profiles = dynamic.profiles(shapes) if dynamic else {}
        batch = None
        if not profiles and trt.max_batch > 1:      # one profile, batch 1..max_batch, kernels tuned for max_batch
            batch = [1, trt.max_batch, trt.max_batch]
            profiles = {n: [[b, *s[1:]] for b in batch] for n, s in shapes.items()}
        return {**trt.model_dump(), "int8": True, "fp16": trt.fp16_fallback, "input_shape": [1, *input_shape[1:]],
                "strongly_typed": strongly_typed(trt.version), "min_opt_max_batch": batch, "profiles": profiles or None}

    def compile(self, job: base.CompileJob) -> dict:
        from pipeline.runner import log
        t = job.target
        onnx_name = self.int8_file
        shutil.copyfile(job.int8, job.out / onnx_name)
        opts = self.build_options(t, job.input_shape, job.input_shapes, job.dynamic)
        problems = check_compat(job.out / onnx_name, t.tensorrt.version,
                                dynamic_batch=self.dynamic_batch(t) or bool(job.dynamic and job.dynamic.batch),
                                fp16_expected=t.tensorrt.fp16_fallback, profiles=opts["profiles"])
        for p in problems:
            log.warning("[%s] TensorRT check: %s %s: %s", job.stage, p["op"], p["node"], p["message"])
        for fname, text in build_script(onnx_name, PLAN, opts).items():
            (job.out / fname).write_text(text)
            if fname.endswith(".sh"):
                (job.out / fname).chmod(0o755)
        for fname, src in device_files().items():
            shutil.copyfile(src, job.out / fname)
        ok, reason = self.available()
        engine = {"status": "to be built on device", "reason": reason}
        arts = [{"name": f"{t.name}: INT8 QDQ ONNX (host proxy)", "file": onnx_name, "backend": self.host_runtime,
                 "precision": "int8", "target": t.name, "threads": t.threads, "host_proxy_of": self.name,
                 "note": "TensorRT-ready QDQ ONNX run in ONNX Runtime CPU: host proxy of its INT8 numerics"}]
        if ok:
            meta = build_engine(job.out / onnx_name, job.out / PLAN, int8=True, fp16=t.tensorrt.fp16_fallback,
                                workspace_mb=t.tensorrt.workspace_mb, timing_cache=job.out / "timing.cache",
                                dla_core=t.tensorrt.dla_core, gpu_fallback=t.tensorrt.gpu_fallback,
                                min_opt_max_batch=opts["min_opt_max_batch"], strongly_typed=opts["strongly_typed"],
                                profiles=opts["profiles"])
            engine = {"status": "built", "meta": meta}
        arts.append({"name": f"{t.name}: TensorRT engine", "file": PLAN if ok else None,
                     "backend": self.name, "precision": "int8+fp16" if t.tensorrt.fp16_fallback else "int8",
                     "target": t.name, "runs_here": ok, "device_engine": True,
                     "note": "built and timed here" if ok else f"to be built on device ({reason})"})
        nms = None
        if job.nms:
            from pipeline.backends.tensorrt.nms import NMS_FILE, add_efficient_nms
            nms = add_efficient_nms(job.out / onnx_name, job.out / NMS_FILE, **job.nms)
            log.info("[%s] wrote %s (EfficientNMS_TRT in the graph; not verified here: %s)", job.stage, NMS_FILE,
                     nms["why_not"])
        return {"backend": self.name, "engine": engine, "compat_problems": problems,
                "deliverables": [onnx_name, "build_engine.sh", "build_engine.json", *device_files()]
                + ([PLAN] if ok else []) + ([nms["file"]] if nms else []),
                "artifacts": arts, **({"in_graph_nms": nms} if nms else {})}

    def golden_tolerance(self, target, output_meta: dict) -> base.Tolerance:
        scale = output_meta.get("scale") if output_meta.get("dtype") == "int8" else None
        return base.Tolerance(float(2 * scale) if scale else 0.25, 0.9,
                              "device INT8 kernels (TensorRT) differ from the ONNX Runtime host proxy; "
                              "compare argmax and a loose logit tolerance")

    def device_toolchain(self, target) -> dict:
        return {"tensorrt": target.tensorrt.version, "jetpack": target.tensorrt.jetpack}

    def bundle_notes(self, target, compile_metrics: dict) -> str:
        return NOTES.format(device=target.device.name, trt=target.tensorrt.version, jetpack=target.tensorrt.jetpack,
                            onnx=compile_metrics["deliverables"][0])

    def report_notes(self, target, compile_metrics: dict, deliverable) -> list[str]:
        if compile_metrics.get("engine", {}).get("status") == "built":
            return []
        return ["the QDQ ONNX's host latency is ONNX Runtime CPU executing unfused Q/DQ (and fp16) nodes: it checks "
                "INT8 numerics, it says nothing about TensorRT speed; run `python -m pipeline bench` on the device"]

    def check_bundle_engine(self, tdir: Path, manifest: dict) -> str:
        """The plan's check: run it on golden.npz where TensorRT and a GPU exist, else say why not."""
        from pipeline.bundle.devicekit import golden_inputs
        from pipeline.verify import compare
        ok, reason = self.available()
        plan = tdir / PLAN
        if not ok:
            return f"not checked here: needs TensorRT on the device ({reason})"
        if not plan.is_file():
            return "not checked: no model.plan in the bundle (build it with build_engine.py or `python -m pipeline bench`)"
        try:
            runner = Runner(plan)
            with np.load(tdir / manifest["golden"]["file"]) as g:
                x, y = golden_inputs(g), g["y"]
            ok, what = compare(runner.run(x), y, manifest["golden"])
        except (UserError, KeyError, ValueError, OSError) as e:
            return f"FAILED: model.plan could not run: {getattr(e, 'problem', e)}"
        return f"{'OK' if ok else 'FAILED'}: model.plan {what}"

    def bench(self, tdir: Path, manifest: dict, warmup: int, runs: int, threads: int) -> dict:
        import json

        from pipeline.bundle.devicekit import device_latency, device_report, golden_check, golden_inputs
        from pipeline.device import WRITTEN_BY
        from pipeline.hashing import sha256_file
        ok, reason = self.available()
        if not ok:
            raise UserError(f"target '{manifest['target']}' is a TensorRT bundle and TensorRT cannot run here: "
                            f"{reason}", "run bench on the device (a Jetson with JetPack, or a machine with an NVIDIA "
                            "GPU and TensorRT), or use the bundle's build_engine.py there")
        import tensorrt

        expected = (manifest.get("device_toolchain") or {}).get("tensorrt")
        match = None if not expected else tensorrt.__version__.split(".")[:2] == str(expected).split(".")[:2]
        onnx_path, plan = tdir / manifest["deliverable"], tdir / PLAN
        report = device_report(WRITTEN_BY, onnx_path, {"name": self.name, "version": tensorrt.__version__,
                                                       "expected": manifest.get("device_toolchain"),
                                                       "version_match": match}, gpu=True)
        built = not plan.is_file()
        if built:
            try:
                defaults = json.loads((tdir / "build_engine.json").read_text())
            except (OSError, ValueError) as e:
                raise UserError(f"cannot read the build options from {tdir / 'build_engine.json'} ({e.__class__.__name__})",
                                "get an intact bundle (python -m pipeline verify)") from None
            batch, cache = defaults.get("min_opt_max_batch"), defaults.get("timing_cache")
            report["build"] = build_engine(onnx_path, plan, int8=defaults["int8"], fp16=defaults["fp16"],
                                           workspace_mb=defaults["workspace_mb"], dla_core=defaults["dla_core"],
                                           gpu_fallback=defaults["gpu_fallback"],
                                           timing_cache=tdir / cache if cache else None,
                                           min_opt_max_batch=tuple(batch) if batch else None,
                                           strongly_typed=defaults.get("strongly_typed", False),
                                           profiles=defaults.get("profiles"))
        else:
            report["build"] = {"plan": PLAN, "skipped": True}
        runner = Runner(plan)
        report["engine"] = {"file": PLAN, "sha256": sha256_file(plan), "built_here": built}
        report["layer_precisions"] = runner.layer_precisions()
        with np.load(tdir / manifest["golden"]["file"]) as g:
            x, y, labels = golden_inputs(g), g["y"], (g["labels"] if "labels" in g.files else None)
        gold = manifest["golden"]
        report["check"] = golden_check(runner.run(x), y, labels, gold["max_abs"], 0.0, gold["min_argmax_agreement"])
        batch_x = runner.prepare(x)
        n = len(next(iter(batch_x.values()))) if isinstance(batch_x, dict) else len(batch_x)
        report["latency_ms"] = device_latency(runner.time(batch_x, warmup, runs), warmup, n, GPU_WHAT)
        return report
