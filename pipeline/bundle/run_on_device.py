#!/usr/bin/env python3
"""Check and measure this hand-off bundle ON the device, without the edge-compress repository.

Needs Python 3.9+, numpy and the device's runtime only: ONNX Runtime (`onnxruntime`), LiteRT
(`ai-edge-litert`, or `tflite-runtime`), or TensorRT (JetPack's python3-libnvinfer, through the
bundle's build_engine.py). Shipped verbatim in every target folder of a bundle, next to devicekit.py,
hashing.py and preprocess.py.

    python3 run_on_device.py verify                 # sha256 of every file, outputs vs golden.npz
    python3 run_on_device.py bench [--out device_report.json] [--runs 1000] [--warmup 50] [--threads N]

`bench` does what `verify` does, then measures the task's metric on the labelled evaluation slice
(eval.npz, raw stored inputs preprocessed with preprocess.py on the device) and the latency of one
inference, and writes a device report (the schema `python -m pipeline report --device-report` merges).
Exit code: 0 passed, 1 a check failed, 2 usage or run error, 3 the runtime is not installed, 4 the
process that started it (an SSH session) went away, so it stopped rather than run on unattended.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
try:
    from pipeline.bundle.devicekit import (cpu_isa, device_latency, device_report, golden_check, golden_inputs,
                                           task_metrics)
    from pipeline.bundle.preprocess import normalize_inputs
    from pipeline.hashing import sha256_file
except ImportError:          # inside a hand-off bundle: the kit sits next to this file
    sys.path.insert(0, str(HERE))
    from devicekit import cpu_isa, device_latency, device_report, golden_check, golden_inputs, task_metrics
    from hashing import sha256_file
    from preprocess import normalize_inputs

WRITTEN_BY = "run_on_device.py"
MISSING_RUNTIME = 3
INSTALL = {"onnxruntime": "pip install onnxruntime", "tflite": "pip install ai-edge-litert (or tflite-runtime)",
           "tensorrt": "install JetPack (python3-libnvinfer) or TensorRT's Python wheel"}


class RuntimeMissing(Exception):
    pass


class ParentWatch:
    """Ends the run when the process that started it is gone: a bench started over SSH whose connection
    dropped or timed out must not keep timing on the device (its sshd session, the parent, exits)."""

    def __init__(self):
        self.parent, self.next = os.getppid(), time.monotonic() + 0.5

    def __call__(self) -> None:
        now = time.monotonic()
        if now >= self.next:
            self.next = now + 0.5
            if os.getppid() != self.parent:
                print("error: the session that started this run is gone (dropped connection?): stopped",
                      file=sys.stderr)
                os._exit(4)


def timed(run_raw, prepared, warmup: int, runs: int) -> list[float]:
    """Wall time in ms of `runs` calls of run_raw(prepared) after `warmup` untimed ones."""
    watch = ParentWatch()
    for _ in range(warmup):
        run_raw(prepared)
        watch()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        run_raw(prepared)
        times.append((time.perf_counter_ns() - t0) / 1e6)
        watch()
    return times


def _version(*packages: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    for p in packages:
        try:
            return f"{p} {version(p)}"
        except PackageNotFoundError:
            continue
    return None


class OrtModel:
    """ONNX Runtime CPU: the session takes normalized inputs by name; a fixed batch is fed sample by sample."""

    def __init__(self, path: Path, threads: int, manifest: dict):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RuntimeMissing(f"onnxruntime: {e}") from None
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inputs = self.session.get_inputs()
        self.batch = self.inputs[0].shape[0] if isinstance(self.inputs[0].shape[0], int) else None
        self.version = _version("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")

    def prepare(self, arrays: list[np.ndarray]) -> dict:
        return {i.name: (a.astype(np.int64) if "int64" in i.type else a.astype(np.float32))
                for i, a in zip(self.inputs, arrays)}

    def run_raw(self, feed: dict) -> np.ndarray:
        return self.session.run(None, feed)[0]

    def run(self, arrays: list[np.ndarray]) -> np.ndarray:
        step = self.batch or 256
        n = len(arrays[0])
        return np.concatenate([self.run_raw(self.prepare([a[i:i + step] for a in arrays])) for i in range(0, n, step)])


class TfliteModel:
    """LiteRT CPU interpreter: batch-1, NHWC images where the file takes them, int8 I/O (de)quantized."""

    def __init__(self, path: Path, threads: int, manifest: dict):
        interpreter = None
        for module in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite"):
            try:
                interpreter = __import__(module, fromlist=["Interpreter"]).Interpreter
                break
            except ImportError:
                continue
        if interpreter is None:
            raise RuntimeMissing("none of ai_edge_litert, tflite_runtime, tensorflow imports")
        self.it = interpreter(model_path=str(path), num_threads=threads)
        self.it.allocate_tensors()
        by_name = {d["name"]: d for d in self.it.get_input_details()}
        self.ins = [(by_name[i["runtime"]["name"]], i["runtime"].get("layout")) for i in manifest["inputs"]]
        self.out = self.it.get_output_details()[0]
        self.batch = 1
        self.version = _version("ai-edge-litert", "tflite-runtime", "tensorflow")

    def prepare(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """One sample (the first) of each normalized input, as the file's tensor wants it."""
        out = []
        for a, (d, layout) in zip(arrays, self.ins):
            a, dtype = a[:1], np.dtype(d["dtype"])
            if a.dtype.kind in "iu":
                out.append(np.ascontiguousarray(a, dtype=dtype))
                continue
            a = a.astype(np.float32)
            if layout == "NHWC" and a.ndim == 4:
                a = a.transpose(0, 2, 3, 1)
            if dtype.kind in "iu":
                scale, zero_point = d["quantization"]
                info = np.iinfo(dtype)
                a = np.clip(np.round(a / scale) + zero_point, info.min, info.max).astype(dtype)
            out.append(np.ascontiguousarray(a))
        return out

    def run_raw(self, prepared: list[np.ndarray]) -> np.ndarray:
        for a, (d, _) in zip(prepared, self.ins):
            self.it.set_tensor(d["index"], a)
        self.it.invoke()
        return self.it.get_tensor(self.out["index"])

    def run(self, arrays: list[np.ndarray]) -> np.ndarray:
        outs = []
        for i in range(len(arrays[0])):
            q = self.run_raw(self.prepare([a[i:i + 1] for a in arrays]))
            if np.dtype(self.out["dtype"]).kind in "iu":
                scale, zero_point = self.out["quantization"]
                q = (q.astype(np.float32) - zero_point) * scale
            outs.append(q.astype(np.float32))
        return np.concatenate(outs)


class TrtModel:
    """The engine build_engine.py built (model.plan), run through its TrtRunner (float32 NCHW in, float32 out).
    Written against build_engine.py's API; not run by this project's CI (no TensorRT where it is built)."""

    def __init__(self, path: Path, threads: int, manifest: dict):
        try:
            import tensorrt
        except ImportError as e:
            raise RuntimeMissing(f"tensorrt: {e}") from None
        build_engine = _build_engine()
        self.runner = build_engine.TrtRunner(str(HERE / "model.plan"))
        self.version = f"tensorrt {tensorrt.__version__}"

    def run(self, arrays: list[np.ndarray]) -> np.ndarray:
        return self.runner.run(arrays[0].astype(np.float32))


def _build_engine():
    try:
        from pipeline.bundle import build_engine
    except ImportError:
        import build_engine
    return build_engine


MODELS = {"onnxruntime": OrtModel, "tflite": TfliteModel, "tensorrt": TrtModel}


def ordered(manifest: dict, arrays) -> list[np.ndarray]:
    """Inputs (one array, or {name: array}) as a list in the model's input order."""
    if isinstance(arrays, np.ndarray):
        return [arrays]
    return [arrays[i["name"]] for i in manifest["inputs"]]


def check_files(manifest: dict) -> list[str]:
    """Failures: a listed file missing or changed since the bundle was made."""
    bad = []
    for name, want in manifest["files"].items():
        p = HERE / name
        if not p.is_file() or ".." in Path(name).parts or Path(name).is_absolute():
            bad.append(f"missing file: {name}")
        elif sha256_file(p) != want:
            bad.append(f"sha256 mismatch: {name}")
    return bad


def evaluate(run, manifest: dict, folder: Path = HERE) -> dict | None:
    """The task's metrics on eval.npz (raw stored inputs, preprocessed here) next to the host's figures;
    `run(list of normalized input arrays in model order)` returns the outputs."""
    ev = manifest.get("eval")
    if not ev:
        return None
    with np.load(folder / ev["file"]) as z:
        raw = {k[3:]: z[k] for k in z.files if k.startswith("x__")} if "x" not in z.files else {"x": z["x"]}
        y = z["y"]
    kinds = {i["name"]: i.get("kind") for i in manifest["inputs"]}
    if "x" in raw:
        kinds["x"] = manifest["inputs"][0].get("kind")
    pre = manifest["preprocessing"]
    x = normalize_inputs(raw, kinds, pre["mean"], pre["std"])
    t0 = time.perf_counter()
    outputs = run(list(x.values()) if "x" in x else ordered(manifest, x))
    metrics = task_metrics(manifest["task"]["name"], outputs, y)
    primary = manifest["task"]["metric"]["name"]
    return {"file": ev["file"], "sha256": sha256_file(folder / ev["file"]), "samples": int(len(y)),
            "metric": primary, "value": None if metrics is None else metrics[primary], "metrics": metrics,
            "host_value": ev.get("host_value"), "host_metrics": ev.get("host_metrics"),
            "seconds": round(time.perf_counter() - t0, 3)}


def tensorrt_bench(a, manifest: dict) -> int:
    """build_engine.py builds model.plan (unless there is one), checks golden.npz and times the engine with
    CUDA events into the report; the evaluation slice is then run through the same engine."""
    build_engine = _build_engine()
    plan = HERE / "model.plan"
    rc = build_engine.main(["--report", a.out, "--warmup", str(a.warmup), "--runs", str(a.runs)]
                           + (["--skip-build"] if plan.is_file() else []))
    if rc == 2 and "tensorrt" not in sys.modules:
        return MISSING_RUNTIME
    report = json.loads(Path(a.out).read_text())
    if rc == 0:
        report["eval"] = evaluate(TrtModel(plan, 1, manifest).run, manifest)
        report["written_by"] = f"{WRITTEN_BY} (build_engine.py)"
        Path(a.out).write_text(json.dumps(report, indent=2))
    return rc


def time_onnx(path: Path, threads: int, warmup: int, runs: int) -> int:
    """p50/p90 of one ONNX Runtime inference of `path` on zeros of its input shapes, as JSON on stdout."""
    try:
        model = OrtModel(path, threads, {})
    except RuntimeMissing as e:
        print(f"error: timing needs onnxruntime, which does not import here ({e}); fix: {INSTALL['onnxruntime']}",
              file=sys.stderr)
        return MISSING_RUNTIME
    feed = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape],
                             np.int64 if "int64" in i.type else np.float32) for i in model.inputs}
    times = timed(model.run_raw, feed, warmup, runs)
    print(json.dumps({**device_latency(times, warmup, 1, "ONNX Runtime FP32 on this device's CPU"),
                      "threads": threads, "isa": cpu_isa()}))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Check and measure this bundle on the device (numpy + runtime only).")
    ap.add_argument("command", choices=("verify", "bench", "time"))
    ap.add_argument("model", nargs="?", help="time: an FP32 ONNX to time with ONNX Runtime (latency-budget pruning)")
    ap.add_argument("--out", default="device_report.json", help="bench: the device report to write")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: the target's)")
    a = ap.parse_args(argv)
    if a.command == "time":
        return time_onnx(Path(a.model), a.threads or 1, a.warmup, a.runs)
    manifest = json.loads((HERE / "manifest.json").read_text())
    backend, threads = manifest["backend"], a.threads or manifest.get("threads") or 2
    if a.runs < 5 or a.warmup < 0 or threads < 1:
        print("error: need --runs >= 5, --warmup >= 0, --threads >= 1", file=sys.stderr)
        return 2
    bad = check_files(manifest)
    for line in bad:
        print(f"FAIL {line}")
    if bad:
        return 1
    print(f"ok   sha256 of {len(manifest['files'])} files match manifest.json")
    if backend == "tensorrt" and a.command == "bench":
        return tensorrt_bench(a, manifest)
    if backend == "tensorrt" and not (HERE / "model.plan").is_file():
        print("skip golden: no model.plan yet (run `python3 run_on_device.py bench`: it builds the engine first)")
        return 0
    try:
        model = MODELS[backend](HERE / manifest["deliverable"], threads, manifest)
    except RuntimeMissing as e:
        print(f"error: this {backend} bundle needs its runtime, which does not import here ({e}); fix: "
              f"{INSTALL[backend]}", file=sys.stderr)
        return MISSING_RUNTIME
    gold = manifest["golden"]
    with np.load(HERE / gold["file"]) as g:
        x, y, labels = golden_inputs(g), g["y"], (g["labels"] if "labels" in g.files else None)
        boxes = g["boxes"] if "boxes" in g.files else None
    check = golden_check(model.run(ordered(manifest, x)), y, labels, gold["max_abs"], 0.0, gold["min_argmax_agreement"],
                         boxes, manifest.get("detection"))
    if "boxes" in check:
        print(f"{'ok  ' if check['passed'] else 'FAIL'} golden boxes: {check['matched']} of {check['boxes']} found again "
              f"(class + IoU >= {check['iou']}), {check['found']} found, on {check['n']} samples")
    else:
        print(f"{'ok  ' if check['passed'] else 'FAIL'} golden: max |diff| {check['max_abs_err']:.3g} (tolerance "
              f"{check['atol']:.3g}), argmax agreement {check['top1_agreement']:.3f} on {check['n']} samples")
    if a.command == "verify":
        return 0 if check["passed"] else 1
    report = device_report(WRITTEN_BY, HERE / manifest["deliverable"],
                           {"name": backend, "version": model.version, "threads": threads}, gpu=False)
    report["check"] = check
    report["eval"] = evaluate(model.run, manifest)
    if report["eval"]:
        e = report["eval"]
        print(f"ok   {e['metric']} on {e['samples']} labelled samples (eval.npz): {e['value']} here, "
              f"{e['host_value']} on the build host")
    batch = getattr(model, "batch", None) or 1            # a fixed batch is timed whole, else one sample
    prepared = model.prepare([a[:batch] for a in ordered(manifest, x)])
    times = timed(model.run_raw, prepared, a.warmup, a.runs)
    what = f"wall time of one {backend} inference on this device's CPU ({threads} threads), input prepared beforehand"
    report["latency_ms"] = device_latency(times, a.warmup, batch, what)
    Path(a.out).write_text(json.dumps(report, indent=2))
    lat = report["latency_ms"]
    print(f"ok   latency p50 {lat['p50']:.3f} ms, p90 {lat['p90']:.3f} ms ({lat['n']} runs); wrote {a.out}")
    return 0 if check["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
