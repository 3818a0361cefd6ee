"""quantize (one per target): INT8 post-training quantization calibrated on a managed set, with the
numerics the target's engine wants:

- tensorrt: explicit-quantization QDQ ONNX (symmetric int8, zero-point 0, Q/DQ where TensorRT fuses
  them) from nvidia-modelopt's ONNX quantizer;
- onnxruntime: QDQ ONNX from onnxruntime.quantization.quantize_static;
- tflite: full-integer INT8 .tflite from litert-torch's PT2E quantizer.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline import backends, calibration, models
from pipeline.config import Target
from pipeline.errors import UserError
from pipeline.runner import Context, Stage
from pipeline.stages.load import input_shape, model_spec

OUTPUT_FILE = {"tensorrt": "model.int8.qdq.onnx", "onnxruntime": "model.int8.onnx", "tflite": "model.int8.tflite"}


def calibration_set(ctx: Context):
    return calibration.resolve(ctx.config.quantize.calibration, ctx.data, ctx.config.seed, input_shape(ctx))


class QuantizeStage(Stage):
    def __init__(self, target: Target, source: str):
        self.target = target
        self.name = f"quantize-{target.name}"
        self.inputs = ("load", source)
        self.source = source

    def method(self, ctx: Context) -> str:
        return ctx.config.quantize.method or self.target.calibration_method

    def config_slice(self, ctx: Context) -> dict:
        _, manifest, _ = calibration_set(ctx)
        return {"backend": self.target.backend, "method": self.method(ctx), "io_dtype": self.target.io_dtype,
                "percentile": ctx.config.quantize.percentile, "seed": ctx.config.seed,
                "calibration": {"name": manifest["name"], "sha256": manifest["sha256"]}}

    def run(self, ctx: Context, out: Path) -> dict:
        t, ds = self.target, ctx.data
        x_cal, manifest, man_path = calibration_set(ctx)
        calib = ds.normalize(x_cal)
        backend = backends.get(t.backend)
        dest = out / OUTPUT_FILE[t.backend]
        if t.backend == "tflite":
            spec = model_spec(ctx)
            if spec.kind == "onnx":
                raise UserError(f"target '{t.name}' (TFLite) needs a torch model, got {spec.path.name}",
                                "pass FILE.py:FACTORY or MODEL.pt2, or pick an onnxruntime/tensorrt target")
            model = models.load_model(spec, ctx.artifact(self.source, "model.pt" if spec.trainable else "model.pt2"))
            example = torch.from_numpy(ds.normalize(ds.x_test[:1]))
            meta = backend.convert_int8(model, example, calib, dest, io_dtype=t.io_dtype, method=self.method(ctx))
        else:
            meta = backend.quantize_int8(ctx.artifact(self.source, "model.onnx"), calib, dest, method=self.method(ctx))
        return {
            "backend": t.backend, "method": self.method(ctx), "file": dest.name,
            "calibration": {"name": manifest["name"], "manifest": man_path.name, "sha256": manifest["sha256"],
                            "size": manifest["size"], "seed": manifest["seed"], "source": manifest["source"]["data"]},
            "engine_meta": meta,
        }
