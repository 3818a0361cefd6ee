"""load: resolve the model and data, check they fit together, evaluate the teacher, and write it
as files the later stages read (model.pt for rebuilding, model.pt2, model.onnx)."""
from __future__ import annotations

import inspect
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from pipeline import models
from pipeline.backends import onnxruntime as ort_backend
from pipeline.errors import UserError
from pipeline.latency import measure
from pipeline.compress.accuracy import runner_outputs, torch_outputs
from pipeline.hashing import sha256_file
from pipeline.runner import Context, Stage, write_json


def forward_outputs(model: torch.nn.Module, x, task, ds) -> torch.Tensor:
    """Run the model once on normalized inputs and check its output fits the task (one clear line if not)."""
    try:
        with torch.no_grad():
            y = x.call(model)
    except Exception as e:  # noqa: BLE001 -- any failure here is a model/input mismatch
        raise UserError(f"the model fails on inputs {({k: list(v.shape) for k, v in x.items()})}: "
                        f"{e.__class__.__name__}: {str(e).splitlines()[0][:160]}",
                        "pass data whose inputs match forward()'s parameters (names, shapes, dtypes)") from None
    if not isinstance(y, torch.Tensor):
        raise UserError(f"the model returns a {type(y).__name__}, not one tensor",
                        "wrap it so forward() returns one output tensor (e.g. the logits)")
    if y.ndim == 0 or y.shape[0] != len(x):
        raise UserError(f"the model returns shape {list(y.shape)} for {len(x)} samples",
                        "return one output row per input sample")
    task.check_outputs(y.float().numpy(), ds)
    return y


def check_input_names(model: torch.nn.Module, ds) -> None:
    """The data's inputs must be forward()'s parameters, in order (a single x_<split> input fits any model)."""
    if ds.x_train.positional:
        return
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [p.name for p in params]
    required = [p.name for p in params if p.default is p.empty]
    if ds.input_names != names[: len(ds.input_names)] or not set(required) <= set(ds.input_names):
        raise UserError(f"the data's inputs {ds.input_names} do not match forward({', '.join(names)})",
                        "name the arrays <param>_train / <param>_test after forward()'s parameters, in order")


def teacher_artifact(metrics: dict) -> dict:
    return {"name": "teacher", "file": "model.onnx", "backend": "onnxruntime", "precision": "fp32",
            "params": metrics["params"], "macs": metrics["macs"]}


def onnx_param_count(path: Path) -> int:
    import onnx
    return int(sum(np.prod(t.dims) for t in onnx.load(str(path), load_external_data=False).graph.initializer))


log = logging.getLogger("pipeline")


def cost_check(torch_matmul_macs: int, onnx_path: Path) -> dict:
    """The ONNX graph's Conv/Gemm/MatMul MACs next to the torch counter's (pipeline/models/onnx_cost.py);
    a difference over 1% is logged: one of the counters missed layers."""
    from pipeline.models.onnx_cost import onnx_cost
    cost = onnx_cost(onnx_path)
    agree = None if cost["unresolved"] else abs(cost["macs"] - torch_matmul_macs) <= 0.01 * max(torch_matmul_macs, 1)
    if agree is False:
        log.warning("[load] MACs differ: the torch counter finds %d conv/linear/matmul MACs, the ONNX graph %d",
                    torch_matmul_macs, cost["macs"])
    return {**cost, "torch_matmul_macs": int(torch_matmul_macs), "agree": agree}


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
            "std": list(ctx.data.std), "seed": c.seed, **({"dynamic": c.dynamic} if c.dynamic else {}),
            "test_limit": c.evaluate.test_limit,     # the teacher's accuracy is measured on these test samples
        }

    def run(self, ctx: Context, out: Path) -> dict:
        ds, spec, task = ctx.data, ctx.model_spec(), ctx.task
        shape = ctx.input_shape()
        x_test, y_test = ds.x_test[: ctx.config.evaluate.test_limit], ds.y_test[: ctx.config.evaluate.test_limit]
        example = ctx.example()
        first = ds.specs[0]
        data_info = {"name": ds.name, "source": ds.source, "fingerprint": ds.fingerprint(),
                     "inputs": [i.as_dict() for i in ds.specs], "input_shape": shape,
                     "layout": "NCHW" if first.kind == "image" else None, "dtype": "float32", "mean": list(ds.mean),
                     "std": list(ds.std), "classes": ds.classes, "train": len(ds.x_train), "test": len(ds.x_test),
                     "stored_dtype": first.dtype, "task": task.describe(),
                     **{k: ds.meta[k] for k in ("preprocessing", "class_order", "files") if k in ds.meta}}
        write_json(out / "data.json", data_info)
        metrics: dict = {"model": spec.label, "kind": spec.kind, "input_shape": shape, "data": data_info["name"],
                         "classes": ds.num_classes, "task": task.describe(), "inputs": data_info["inputs"]}

        if spec.kind == "onnx":
            log.info("[load] scoring %s on %d test samples of %s in ONNX Runtime", spec.label, len(x_test), ds.name)
            runner = ort_backend.Runner(spec.path, threads=2)  # errors name the user's file
            shutil.copyfile(spec.path, out / "model.onnx")
            if len(runner.inputs) == 1 and list(runner.input_shape)[1:] != shape[1:]:
                raise UserError(f"{spec.path.name} takes input {list(runner.input_shape)}, the data gives {shape}",
                                "pass data of the model's input shape")
            outputs = runner_outputs(runner, ds, x_test, ctx.config.evaluate.batch_size)
            task.check_outputs(outputs[:1], ds)
            scores = task.evaluate(outputs, y_test)
            xb = runner.prepare(example)
            lat = measure(lambda: runner.run_raw(xb), runs=ctx.config.load.latency_runs, threads=2)
            metrics.update({"accuracy": scores[task.primary.name], "metrics": scores, "latency_p50_ms": lat["p50_ms"],
                            "latency_engine": "onnxruntime", "params": onnx_param_count(out / "model.onnx"), "macs": None})
            return metrics | {"artifacts": [teacher_artifact(metrics)]}

        log.info("[load] building %s and checking it on %d test samples of %s", spec.label, len(x_test), ds.name)
        model = models.build(spec)
        models.check_finite(model, spec.label)
        if spec.kind == "factory":
            check_input_names(model, ds)
        forward_outputs(model, example, task, ds)
        scores = task.evaluate(torch_outputs(model, ds, x_test, ctx.config.evaluate.batch_size), y_test)
        log.info("[load] teacher %s %.4f; timing it (%d runs), exporting torch.export and ONNX",
                 task.primary.name, scores[task.primary.name], ctx.config.load.latency_runs)
        torch.set_num_threads(2)
        with torch.no_grad():
            lat = measure(lambda: example.call(model), runs=ctx.config.load.latency_runs, threads=torch.get_num_threads())

        if spec.trainable:
            models.save_model(model, out / "model.pt")
        models.export_pt2(model, example, out / "model.pt2")
        onnx_meta = ort_backend.export_onnx(model, example, out / "model.onnx", dynamic=ctx.dynamic())
        # The ONNX file is what later stages and devices run: check it answers like torch.
        runner = ort_backend.Runner(out / "model.onnx", threads=2)
        probe = ds.normalize(ds.x_test[:64])
        with torch.no_grad():
            ref = probe.call(model).float().numpy()
        diff = float(np.abs(runner.run(probe) - ref).max())
        macs, parts = models.count_macs(model, example, breakdown=True)
        if diff > 1e-3 * max(1.0, float(np.abs(ref).max())):
            raise UserError(f"ONNX export of {spec.label} differs from torch by {diff:.3g}",
                            "report this model; the exporter mis-translated an op")
        metrics.update({"accuracy": scores[task.primary.name], "metrics": scores, "latency_p50_ms": lat["p50_ms"],
                        "latency_engine": "torch-eager", "params": models.count_params(model),
                        "macs": macs, "macs_matmul": parts["matmul"], "onnx": onnx_meta, "onnx_max_abs_diff": diff,
                        "onnx_cost": cost_check(parts["matmul"], out / "model.onnx")})
        return metrics | {"artifacts": [teacher_artifact(metrics)]}
