"""compile (one per target): turn the quantized model into what the device runs.

- tensorrt: the QDQ ONNX, a static TensorRT compatibility check, and the on-device build scripts;
  the engine itself is built here only when TensorRT and a GPU are present (engines are specific to
  the GPU and TensorRT version that built them), otherwise it is "to be built on device".
- tflite: the INT8 .tflite, plus the FP32 .tflite so INT8 can be compared with float on LiteRT;
- onnxruntime: the INT8 QDQ model and the FP32 model.
For tflite and onnxruntime, precision "auto" makes the faster of the two on this host that stays
within the accuracy budget the deliverable.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from pipeline import backends
from pipeline.compress import sensitivity
from pipeline.config import Target
from pipeline.errors import UserError
from pipeline.latency import measure
from pipeline.runner import Context, Stage, log
from pipeline.compress.accuracy import runner_accuracy

SELECTION_SAMPLES = 2000  # held-out training samples used to choose a precision (never the test split)


class CompileStage(Stage):
    def __init__(self, target: Target, source: str):
        self.target = target
        self.name = f"compile-{target.name}"
        self.inputs = (f"quantize-{target.name}", source)
        self.source = source

    def config_slice(self, ctx: Context) -> dict:
        return {"target": self.target.model_dump(exclude={"description", "source"}), "seed": ctx.config.seed}

    def run(self, ctx: Context, out: Path) -> dict:
        return getattr(self, f"_{self.target.backend}")(ctx, out)

    # ------------------------------------------------------------ TensorRT
    def _tensorrt(self, ctx: Context, out: Path) -> dict:
        t, trt = self.target, backends.get("tensorrt")
        onnx_name = OUTPUT_FILE["tensorrt"]
        shutil.copyfile(ctx.artifact(self.inputs[0], onnx_name), out / onnx_name)
        dynamic = t.tensorrt.max_batch > 1
        problems = trt.check_compat(out / onnx_name, t.tensorrt.version, dynamic_batch=dynamic)
        for p in problems:
            log.warning("[%s] TensorRT check: %s %s: %s", self.name, p["op"], p["node"], p["message"])
        opts = {**t.tensorrt.model_dump(), "int8": True, "fp16": t.tensorrt.fp16_fallback,
                "input_shape": [1, *ctx.input_shape()[1:]],
                # one optimization profile, batch 1..max_batch, kernels tuned for max_batch
                "min_opt_max_batch": [1, t.tensorrt.max_batch, t.tensorrt.max_batch] if dynamic else None}
        for fname, text in trt.build_script(onnx_name, "model.plan", opts).items():
            (out / fname).write_text(text)
            if fname.endswith(".sh"):
                (out / fname).chmod(0o755)
        ok, reason = trt.available()
        engine = {"status": "to be built on device", "reason": reason}
        arts = [{"name": f"{t.name}: INT8 QDQ ONNX (host proxy)", "file": onnx_name, "backend": "onnxruntime",
                 "precision": "int8", "target": t.name, "threads": t.threads,
                 "note": "TensorRT-ready QDQ ONNX run in ONNX Runtime CPU: host proxy of its INT8 numerics"}]
        if ok:
            meta = trt.build_engine(out / onnx_name, out / "model.plan", int8=True, fp16=t.tensorrt.fp16_fallback,
                                    workspace_mb=t.tensorrt.workspace_mb, timing_cache=out / "timing.cache",
                                    dla_core=t.tensorrt.dla_core, gpu_fallback=t.tensorrt.gpu_fallback,
                                    min_opt_max_batch=opts["min_opt_max_batch"])
            engine = {"status": "built", "meta": meta}
        arts.append({"name": f"{t.name}: TensorRT engine", "file": "model.plan" if ok else None,
                     "backend": "tensorrt", "precision": "int8+fp16" if t.tensorrt.fp16_fallback else "int8",
                     "target": t.name, "runs_here": ok,
                     "note": "built and timed here" if ok else f"to be built on device ({reason})"})
        return {"backend": "tensorrt", "engine": engine, "compat_problems": problems,
                "deliverables": [onnx_name, "build_engine.sh", "build_engine.py"] + (["model.plan"] if ok else []),
                "artifacts": arts}

    # ------------------------------------------------------------ TFLite
    def _tflite(self, ctx: Context, out: Path) -> dict:
        t, tfl, ds = self.target, backends.require("tflite"), ctx.data
        int8_name = OUTPUT_FILE["tflite"]
        shutil.copyfile(ctx.artifact(self.inputs[0], int8_name), out / int8_name)
        model = ctx.torch_model(self.source)
        example = torch.from_numpy(ds.normalize(ds.x_test[:1]))
        float_meta = tfl.convert_float(model, example, out / "model.fp32.tflite")
        runner = tfl.Runner(out / int8_name, threads=t.threads)
        candidates = {"int8": int8_name, "fp32": "model.fp32.tflite"}
        choice, measured = self._choose(ctx, out, tfl, candidates)
        common = {"backend": "tflite", "target": t.name, "threads": t.threads}
        return {"backend": "tflite", "layout": runner.layout, "io_dtype": runner.io_dtype, "float_meta": float_meta,
                "precision": choice, "selection": measured, "deliverables": [candidates[choice]],
                "artifacts": [{**common, "name": f"{t.name}: INT8 TFLite", "file": int8_name, "precision": "int8",
                               "selected": choice == "int8"},
                              {**common, "name": f"{t.name}: FP32 TFLite", "file": "model.fp32.tflite",
                               "precision": "fp32", "selected": choice == "fp32"}]}

    # ------------------------------------------------------------ precision choice (tflite, onnxruntime)
    def _choose(self, ctx: Context, out: Path, backend, candidates: dict[str, str]) -> tuple[str, dict]:
        """The precision to ship: the target's, or with "auto" the faster of INT8 and FP32 on this host
        that stays within the accuracy budget; returns it and what was measured."""
        t, ds = self.target, ctx.data
        choice, measured = ("int8" if t.precision == "int8" else "fp32"), {}
        if t.precision == "auto":
            # Choose on held-out *training* samples outside the calibration set: the test split is only
            # for the report, and calibration samples would flatter INT8.
            _, manifest, _ = ctx.calibration_set()
            held = sensitivity.held_out(ds, manifest.get("indices", []), SELECTION_SAMPLES, ctx.config.seed + 1)
            idx = held.indices
            x, y = ds.x_train[idx], ds.y_train[idx]
            for prec, fname in candidates.items():
                r = backend.Runner(out / fname, threads=t.threads)
                xb = r.prepare(ds.normalize(ds.x_test[:1]))
                lat = measure(lambda: r.run_raw(xb), warmup=20, runs=200, threads=t.threads)
                measured[prec] = {"accuracy": runner_accuracy(r, ds, x, y), "p50_ms": lat["p50_ms"]}
            drop = measured["fp32"]["accuracy"] - measured["int8"]["accuracy"]
            int8_ok = drop <= t.budgets.max_accuracy_drop
            choice = "int8" if int8_ok and measured["int8"]["p50_ms"] < measured["fp32"]["p50_ms"] else "fp32"
            why = (f"INT8 p50 {measured['int8']['p50_ms']:.3f} ms vs FP32 {measured['fp32']['p50_ms']:.3f} ms, "
                   f"INT8 accuracy drop {drop * 100:.2f} pt on {len(idx)} held-out training samples")
            log.info("[%s] precision auto -> %s (%s)", self.name, choice, why)
            measured["reason"] = why
        elif t.precision not in ("int8", "fp32"):
            raise UserError(f"target '{t.name}': precision '{t.precision}' is not offered by {t.backend} on CPU",
                            "use int8, fp32 or auto")
        return choice, measured

    # ------------------------------------------------------------ ONNX Runtime
    def _onnxruntime(self, ctx: Context, out: Path) -> dict:
        t, ort = self.target, backends.require("onnxruntime")
        int8_name = OUTPUT_FILE["onnxruntime"]
        shutil.copyfile(ctx.artifact(self.inputs[0], int8_name), out / int8_name)
        shutil.copyfile(ctx.artifact(self.source, "model.onnx"), out / "model.fp32.onnx")
        candidates = {"int8": int8_name, "fp32": "model.fp32.onnx"}
        choice, measured = self._choose(ctx, out, ort, candidates)
        common = {"backend": "onnxruntime", "target": t.name, "threads": t.threads}
        return {"backend": "onnxruntime", "precision": choice, "selection": measured,
                "deliverables": [candidates[choice]],
                "artifacts": [{**common, "name": f"{t.name}: INT8 ONNX", "file": int8_name, "precision": "int8",
                               "selected": choice == "int8"},
                              {**common, "name": f"{t.name}: FP32 ONNX", "file": "model.fp32.onnx",
                               "precision": "fp32", "selected": choice == "fp32"}]}
