"""load: resolve the model and data, check they fit together, evaluate the teacher, and write it
as files the later stages read (model.pt for rebuilding, model.pt2, model.onnx)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from pipeline import models
from pipeline.backends import onnxruntime as ort_backend
from pipeline.errors import UserError
from pipeline.latency import measure
from pipeline.compress.accuracy import runner_accuracy, torch_accuracy
from pipeline.hashing import sha256_file
from pipeline.runner import Context, Stage, write_json


def forward_logits(model: torch.nn.Module, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Run the model once and check it returns (N, num_classes) logits."""
    try:
        with torch.no_grad():
            y = model(x)
    except Exception as e:  # noqa: BLE001 -- any failure here is a model/input mismatch
        raise UserError(f"the model fails on input of shape {list(x.shape)}: {e.__class__.__name__}: "
                        f"{str(e).splitlines()[0][:160]}", "pass --input-shape matching the model, or data it accepts") from None
    if not isinstance(y, torch.Tensor):
        raise UserError(f"the model returns a {type(y).__name__}, not a tensor of logits",
                        "wrap it so forward() returns the logits tensor only")
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise UserError(f"the model returns shape {list(y.shape)}, expected [N, classes]",
                        "return one row of class logits per input")
    if y.shape[1] != num_classes:
        raise UserError(f"the model has {y.shape[1]} outputs but the data has {num_classes} classes",
                        "pass data with matching labels or a model with that many outputs")
    return y


def teacher_artifact(metrics: dict) -> dict:
    return {"name": "teacher", "file": "model.onnx", "backend": "onnxruntime", "precision": "fp32",
            "params": metrics["params"], "macs": metrics["macs"]}


def onnx_param_count(path: Path) -> int:
    import onnx
    return int(sum(np.prod(t.dims) for t in onnx.load(str(path), load_external_data=False).graph.initializer))


class LoadStage(Stage):
    name = "load"

    config_sections = ("load",)

    def config_slice(self, ctx: Context) -> dict:
        spec = ctx.model_spec()
        c = ctx.config
        return {
            **self.sections(ctx), "model": spec.label, "kind": spec.kind,
            "model_sha256": sha256_file(spec.path),
            "weights_sha256": sha256_file(spec.weights) if spec.weights else None,
            "data": ctx.data.fingerprint(), "input_shape": c.input_shape, "mean": list(ctx.data.mean),
            "std": list(ctx.data.std), "seed": c.seed,
            "test_limit": c.evaluate.test_limit,     # the teacher's accuracy is measured on these test samples
        }

    def run(self, ctx: Context, out: Path) -> dict:
        ds, spec = ctx.data, ctx.model_spec()
        shape = ctx.input_shape()
        x_test, y_test = ds.x_test[: ctx.config.evaluate.test_limit], ds.y_test[: ctx.config.evaluate.test_limit]
        example = torch.from_numpy(ds.normalize(ds.x_test[:1]))
        data_info = {"name": ds.name, "source": ds.source, "fingerprint": ds.fingerprint(),
                     "input_shape": shape, "layout": "NCHW", "dtype": "float32", "mean": list(ds.mean),
                     "std": list(ds.std), "classes": ds.classes, "train": len(ds.x_train), "test": len(ds.x_test),
                     "stored_dtype": str(ds.x_train.dtype)}
        write_json(out / "data.json", data_info)
        metrics: dict = {"model": spec.label, "kind": spec.kind, "input_shape": shape, "data": data_info["name"],
                         "classes": ds.num_classes}

        if spec.kind == "onnx":
            runner = ort_backend.Runner(spec.path, threads=2)  # errors name the user's file
            shutil.copyfile(spec.path, out / "model.onnx")
            if list(runner.input_shape)[1:] != shape[1:]:
                raise UserError(f"{spec.path.name} takes input {list(runner.input_shape)}, the data gives {shape}",
                                "pass data of the model's input shape")
            acc = runner_accuracy(runner, ds, x_test, y_test, ctx.config.evaluate.batch_size)
            xb = runner.prepare(ds.normalize(ds.x_test[:1]))
            lat = measure(lambda: runner.run_raw(xb), runs=ctx.config.load.latency_runs, threads=2)
            metrics.update({"accuracy": acc, "latency_p50_ms": lat["p50_ms"], "latency_engine": "onnxruntime",
                            "params": onnx_param_count(out / "model.onnx"), "macs": None})
            return metrics | {"artifacts": [teacher_artifact(metrics)]}

        model = models.build(spec)
        models.check_finite(model, spec.label)
        forward_logits(model, example, ds.num_classes)
        acc = torch_accuracy(model, ds, x_test, y_test, ctx.config.evaluate.batch_size)
        torch.set_num_threads(2)
        with torch.no_grad():
            lat = measure(lambda: model(example), runs=ctx.config.load.latency_runs, threads=torch.get_num_threads())
        if spec.trainable:
            models.save_model(model, out / "model.pt")
        models.export_pt2(model, example, out / "model.pt2")
        onnx_meta = ort_backend.export_onnx(model, example, out / "model.onnx")
        # The ONNX file is what later stages and devices run: check it answers like torch.
        runner = ort_backend.Runner(out / "model.onnx", threads=2)
        probe = ds.normalize(ds.x_test[:64])
        with torch.no_grad():
            ref = model(torch.from_numpy(probe)).numpy()
        diff = float(np.abs(runner.run(probe) - ref).max())
        if diff > 1e-3 * max(1.0, float(np.abs(ref).max())):
            raise UserError(f"ONNX export of {spec.label} differs from torch by {diff:.3g}",
                            "report this model; the exporter mis-translated an op")
        metrics.update({"accuracy": acc, "latency_p50_ms": lat["p50_ms"], "latency_engine": "torch-eager",
                        "params": models.count_params(model), "macs": models.count_macs(model, example),
                        "onnx": onnx_meta, "onnx_max_abs_diff": diff})
        return metrics | {"artifacts": [teacher_artifact(metrics)]}
