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

from pathlib import Path

import torch

from pipeline import backends
from pipeline.backends.base import CompileJob
from pipeline.config import Target
from pipeline.errors import UserError
from pipeline.latency import measure
from pipeline.runner import Context, Stage, log
from pipeline.compress import sensitivity
from pipeline.compress.accuracy import runner_accuracy

SELECTION_SAMPLES = 2000  # held-out training samples used to choose a precision (never the test split)


class CompileStage(Stage):
    def __init__(self, target: Target, source: str):
        self.target = target
        self.name = f"compile-{target.name}"
        self.inputs = (f"quantize-{target.name}", source)
        self.source = source

    def config_slice(self, ctx: Context) -> dict:
        return {"target": self.target.model_dump(exclude={"description", "source"}), "seed": ctx.config.seed,
                **({"dynamic": ctx.config.dynamic} if ctx.config.dynamic else {})}

    def run(self, ctx: Context, out: Path) -> dict:
        t, ds = self.target, ctx.data
        engine = backends.get(t.backend)
        if engine.host_runtime == engine.name:     # its deliverables are measured here: its runtime must be present
            backends.require(t.backend)
        job = CompileJob(target=t, stage=self.name, out=out, int8=ctx.artifact(self.inputs[0], engine.int8_file),
                         float_onnx=ctx.artifact(self.source, "model.onnx"),
                         torch_model=lambda: ctx.torch_model(self.source),
                         example=ctx.example(), input_shape=ctx.input_shape(),
                         input_shapes=ctx.input_shapes(), dynamic=ctx.dynamic(), nms=ctx.task.in_graph_nms(ds.num_classes),
                         choose=lambda eng, candidates: self._choose(ctx, out, eng, candidates))
        return engine.compile(job)

    # ------------------------------------------------------------ precision choice (tflite, onnxruntime)
    def _choose(self, ctx: Context, out: Path, engine, candidates: dict[str, str]) -> tuple[str, dict]:
        """The precision to ship: the target's, or with "auto" the faster of INT8 and FP32 on this host
        that stays within the accuracy budget; returns it and what was measured."""
        t, ds = self.target, ctx.data
        choice, measured = ("int8" if t.precision == "int8" else "fp32"), {}
        quant = ctx.record(self.inputs[0])["metrics"]
        if t.precision in ("int8", "auto") and quant.get("budget_met") is False and t.float_fallback:
            why = (f"no INT8 configuration meets the accuracy budget (drop {quant['accuracy_drop_vs_float'] * 100:.2f} pt "
                   f"> {quant['budget'] * 100:.2f} pt on held-out samples): FP32 shipped (target float_fallback = true)")
            log.warning("[%s] %s", self.name, why)
            return "fp32", {"reason": why, "float_fallback": True}
        if t.precision == "auto":
            # Choose on held-out *training* samples outside the calibration set: the test split is only
            # for the report, and calibration samples would flatter INT8.
            _, manifest, _ = ctx.calibration_set()
            held = sensitivity.held_out(ds, manifest.get("indices", []), SELECTION_SAMPLES, ctx.config.seed + 1)
            idx = held.indices
            x, y = ds.x_train[idx], ds.y_train[idx]
            for prec, fname in candidates.items():
                r = engine.Runner(out / fname, threads=t.threads)
                xb = r.prepare(ctx.example())
                lat = measure(lambda: r.run_raw(xb), warmup=20, runs=200, threads=t.threads)
                measured[prec] = {"accuracy": runner_accuracy(r, ds, x, y, task=ctx.task), "p50_ms": lat["p50_ms"]}
                # a task with steps around the model (a detector's letterbox, decode + NMS) is chosen on its
                # end-to-end time: an INT8 model a little faster alone may not be once decoding is counted
                steps = ctx.task.pipeline_latency(lambda v, r=r: r.run_raw(r.prepare(v)), ds.x_test[:1], ds.normalize,
                                                  10, 100, t.threads)
                if steps:
                    measured[prec] |= {"inference_p50_ms": lat["p50_ms"], "p50_ms": steps["end_to_end_p50_ms"],
                                       "timed": "end to end (preprocess + inference + decode + NMS)"}
            metric = ctx.task.primary
            drop = metric.worse_by(measured["fp32"]["accuracy"], measured["int8"]["accuracy"])
            int8_ok = drop <= t.budgets.max_accuracy_drop
            choice = "int8" if int8_ok and measured["int8"]["p50_ms"] < measured["fp32"]["p50_ms"] else "fp32"
            what = "end-to-end " if "timed" in measured["int8"] else ""
            why = (f"INT8 {what}p50 {measured['int8']['p50_ms']:.3f} ms vs FP32 {measured['fp32']['p50_ms']:.3f} ms, "
                   f"INT8 {metric.name} {'drop' if drop >= 0 else 'gain'} {abs(drop):.4f} ({metric.direction}) on "
                   f"{len(idx)} held-out training samples")
            log.info("[%s] precision auto -> %s (%s)", self.name, choice, why)
            measured["reason"] = why
        elif t.precision not in ("int8", "fp32"):
            raise UserError(f"target '{t.name}': precision '{t.precision}' is not offered by {t.backend} on CPU",
                            "use int8, fp32 or auto")
        return choice, measured
