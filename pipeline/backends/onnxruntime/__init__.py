"""ONNX Runtime engine (x86 and ARM CPUs): export (export.py), INT8 QDQ (quantize.py), the CPU runner.

The engine's functions are re-exported here: `from pipeline.backends.onnxruntime import export_onnx`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.backends import base
from pipeline.backends.onnxruntime.common import (ACTIVATION_TYPE, ENTROPY_NOTE, INPUT_NAME, OPT_LEVELS,  # noqa: F401
                                                  OUTPUT_NAME, PERCENTILE, input_dtypes,
                                                  WEIGHTED_OPS, available, check_calibration, check_node_names,
                                                  cpu_session, io_shapes, load_onnx, ort_module, qdq_summary)
from pipeline.backends.onnxruntime.export import export_onnx  # noqa: F401
from pipeline.backends.onnxruntime.quantize import quantize_int8  # noqa: F401
from pipeline.data.inputs import Inputs
from pipeline.errors import UserError

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
               "tensor(float16)": np.float16, "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8,
               "tensor(int8)": np.int8}


class Runner(base.Runner):
    """An ONNX Runtime CPU session over one model: normalized inputs by name in, float32 outputs out."""

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
        if len(outputs) != 1:
            raise UserError(f"{path} has {len(outputs)} outputs", "run a model with one output tensor")
        self.path = path
        self.threads = threads
        self.opt_level = opt_level
        self.inputs = [(i.name, tuple(d if isinstance(d, int) else None for d in i.shape), _ORT_DTYPES.get(i.type))
                       for i in inputs]
        self.input_name: str = inputs[0].name
        self.output_name: str = outputs[0].name
        self.input_shape: tuple = self.inputs[0][1]
        self._fixed_batch: int | None = self.input_shape[0]

    def io(self) -> dict:
        return {"inputs": [{"name": n, "shape": list(s), "dtype": np.dtype(d or np.float32).name,
                            "layout": self.layout if len(s) == 4 else None}
                           for n, s, d in self.inputs],
                "outputs": [{"name": self.output_name, "dtype": "float32"}]}

    def _check(self, x) -> dict[str, np.ndarray]:
        """Normalized inputs (Inputs, a dict, or one array for a single-input model) as the session's feed."""
        if isinstance(x, np.ndarray) or (isinstance(x, Inputs) and len(self.inputs) == 1 and len(x.names) == 1):
            arrays = {self.input_name: x if isinstance(x, np.ndarray) else x.single}
        elif isinstance(x, (Inputs, dict)):
            arrays = dict(x.items())
        else:
            raise UserError(f"input is {type(x).__name__}", "pass normalized inputs (Inputs or arrays by name)")
        missing = [n for n, _, _ in self.inputs if n not in arrays]
        if missing:
            raise UserError(f"{self.path.name} takes inputs {[n for n, _, _ in self.inputs]}; missing {missing}",
                            "name the data's inputs like the model's (forward() parameters)")
        feed = {}
        for name, shape, dtype in self.inputs:
            a = arrays[name]
            if not isinstance(a, np.ndarray) or a.ndim != len(shape):
                got = a.shape if isinstance(a, np.ndarray) else type(a).__name__
                raise UserError(f"input '{name}' has shape {got}, {self.path.name} expects {shape}",
                                "pass inputs of the model's shapes")
            if any(w is not None and w != g for w, g in zip(shape[1:], a.shape[1:])):
                raise UserError(f"input '{name}' has shape {a.shape[1:]} per sample, {self.path.name} expects "
                                f"{shape[1:]}", "resize the inputs to the model's input shape")
            feed[name] = np.ascontiguousarray(a, dtype=dtype or np.float32)
        return feed

    def accepts(self, shapes: dict[str, list[int]]) -> bool:
        """Whether the graph takes inputs of these full shapes (its dynamic dims take any size)."""
        return all(n in shapes and len(shapes[n]) == len(s) and all(w is None or w == g for w, g in zip(s, shapes[n]))
                   for n, s, _ in self.inputs) if len(self.inputs) > 1 or self.input_name in shapes else \
            len(shapes) == 1 and self.accepts({self.input_name: next(iter(shapes.values()))})

    def feed(self, x) -> dict[str, np.ndarray]:
        """The checked feed of all of x (every sample, no batch cut): for run_raw at a chosen shape."""
        return self._check(x)

    def prepare(self, x):
        """One inference's input, checked and contiguous: the first `batch` samples of x (the array itself
        for a single-input model, else the feed by name)."""
        feed = {k: v[: self._fixed_batch or 1] for k, v in self._check(x).items()}
        return feed[self.input_name] if len(feed) == 1 else feed

    def run_raw(self, x) -> np.ndarray:
        """One session.run on an input from `prepare` (no checks: for timing loops)."""
        return self.session.run([self.output_name], x if isinstance(x, dict) else {self.input_name: x})[0]

    def run(self, x) -> np.ndarray:
        """Outputs (float32) for any number of samples; a fixed-batch model is run batch by batch."""
        feed = self._check(x)
        n = len(next(iter(feed.values())))
        step = self._fixed_batch or 256
        if self._fixed_batch and n % self._fixed_batch:
            raise UserError(f"{n} samples for a model with a fixed batch of {self._fixed_batch}",
                            f"pass a multiple of {self._fixed_batch} samples")
        out = [self.run_raw({k: v[i:i + step] for k, v in feed.items()}) for i in range(0, n, step)]
        return np.concatenate(out).astype(np.float32, copy=False)


def onnx_quantizer(job: base.QuantizeJob, build, proxy_method: str, symmetric: bool, note: str) -> base.Quantizer:
    """A Quantizer for engines whose INT8 artifact is made from the float ONNX (ONNX Runtime, TensorRT):
    references and held-out outputs from ONNX Runtime, the sensitivity proxy from its quantize_static.
    `build(onnx_in, float_layers)` writes job.dest."""
    t = job.target
    reference = Runner(job.onnx_source, threads=t.threads).run(job.held_x)
    onnx_in = job.onnx_source
    if job.prepared is not None or (job.dynamic_batch and job.to_quantize is not None):
        onnx_in = job.tmp / "to-quantize.onnx"
        export_onnx(job.to_quantize, job.example, onnx_in, dynamic_batch=job.dynamic_batch, dynamic=job.dynamic)
    elif job.dynamic_batch and isinstance(next(iter(io_shapes(load_onnx(job.onnx_source))["inputs"].values()))[0], int):
        raise UserError(f"target '{t.name}' asks for a dynamic batch (max_batch > 1), but {job.model_name} has a "
                        "fixed batch dim", "re-export the ONNX with a dynamic batch axis, or set max_batch = 1")

    def logits(path: Path) -> np.ndarray:
        return Runner(path, threads=t.threads).run(job.held_x)

    from pipeline.compress.output_tail import OUTPUT_TAIL, onnx_tail
    tail, heads = onnx_tail(load_onnx(onnx_in))

    def nodes(float_layers: Sequence[str]) -> list[str]:
        """Float layers as node names: OUTPUT_TAIL stands for every node after the output layers."""
        return [n for f in float_layers for n in (tail if f == OUTPUT_TAIL else [f])]

    def proxy(float_layers: Sequence[str]) -> np.ndarray:
        quantize_int8(onnx_in, job.calib, job.tmp / "sensitivity.onnx", method=proxy_method,
                      exclude_nodes=nodes(float_layers), activation_symmetric=symmetric, per_channel=job.per_channel)
        return logits(job.tmp / "sensitivity.onnx")

    from pipeline.compress.sensitivity import onnx_layers
    return base.Quantizer(onnx_layers(onnx_in), reference, lambda float_layers: build(onnx_in, nodes(float_layers)),
                          logits, proxy, note, job.prepared, heads)


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
        from pipeline.isa import ort_int8_settings
        isa = ort_int8_settings(job.target.device.isa, job.isa_aware)

        def build(onnx_in: Path, float_layers: Sequence[str]) -> dict:
            return {**quantize_int8(onnx_in, job.calib, job.dest, method=job.method, exclude_nodes=float_layers,
                                    per_channel=job.per_channel, reduce_range=isa["reduce_range"]), "isa": isa}
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
