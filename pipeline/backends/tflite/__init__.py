"""TFLite / LiteRT engine: INT8 and FP32 .tflite from litert-torch (conversion: convert.py), run on
the LiteRT CPU interpreter (ai-edge-litert, else tflite-runtime)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline.backends import base
from pipeline.backends.tflite.convert import (CALIB_BATCH, INSTALL_FIX, METADATA_NAME, PERCENTILE,  # noqa: F401
                                              _ordered, convert_float, convert_int8)
from pipeline.data.inputs import Inputs
from pipeline.errors import UserError


def available() -> tuple[bool, str]:
    """(True, "") if a TFLite interpreter (ai-edge-litert, else tflite-runtime) imports, else (False, why)."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
        return True, ""
    except ImportError as e:
        litert_error = f"ai_edge_litert: {e}"
    try:
        import tflite_runtime.interpreter  # noqa: F401
        return True, ""
    except ImportError as e:
        return False, f"{litert_error}; tflite_runtime: {e}"



class Runner(base.Runner):
    """Runs a .tflite on the LiteRT CPU interpreter (XNNPACK delegate) with torch-side inputs: NCHW images
    (transposed to NHWC when the file says so), int ids (cast to the file's int32), quantized where int8."""

    def __init__(self, path: Path, threads: int = 2):
        path = Path(path)
        if not path.is_file():
            raise UserError(f"TFLite model {path} not found", "run the compile stage first, or pass an existing .tflite")
        interpreter_class, layout_from_file = _interpreter_class()
        try:
            self._interpreter = interpreter_class(model_path=str(path), num_threads=threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise UserError(f"cannot load TFLite model {path}: {e}", "re-create it with the compile stage (--force)") from None
        inputs, outputs = _ordered(self._interpreter.get_input_details()), self._interpreter.get_output_details()
        if len(outputs) != 1 or any(d["shape"][0] != 1 for d in inputs if len(d["shape"])):
            raise UserError(f"{path}: expected batch-1 inputs and one output, found inputs "
                            f"{[list(d['shape']) for d in inputs]} and {len(outputs)} outputs",
                            "convert the model at batch 1 with one output")
        self._ins, self._out = inputs, outputs[0]
        self._in = inputs[0]
        shape = tuple(int(d) for d in self._in["shape"])
        self.layout: str = (layout_from_file(path) or _guess_layout(shape)) if len(shape) == 4 else "NCHW"
        self.input_shape: tuple = shape if self.layout == "NCHW" else (shape[0], shape[3], shape[1], shape[2])
        self.io_dtype: str = np.dtype(self._in["dtype"]).name
        self.input_name: str = self._in["name"]
        self.output_name: str = self._out["name"]

    def io(self) -> dict:
        """The .tflite's own tensors: shape in its layout, dtype (int8 when I/O is quantized), quantization."""
        def entry(d: dict) -> dict:
            scale, zero_point = d["quantization"]
            e = {"name": d["name"], "shape": [int(v) for v in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
            return e | ({"scale": float(scale), "zero_point": int(zero_point)}
                        if np.dtype(d["dtype"]).kind in "iu" and scale else {})
        return {"inputs": [entry(d) | {"layout": self.layout if len(d["shape"]) == 4 else None} for d in self._ins],
                "outputs": [entry(self._out)]}

    def _arrays(self, x) -> list[np.ndarray]:
        arrays = list(x.values()) if isinstance(x, (Inputs, dict)) else [x]
        if len(arrays) != len(self._ins):
            raise UserError(f"{len(arrays)} inputs for a model with {len(self._ins)}", "pass every model input")
        return arrays

    def _prepare_one(self, x: np.ndarray, detail: dict, image: bool) -> np.ndarray:
        dtype = np.dtype(detail["dtype"])
        if x.dtype.kind in "iu":
            return np.ascontiguousarray(x, dtype=dtype)
        x = np.asarray(x, dtype=np.float32)
        want = tuple(int(d) for d in detail["shape"][1:])
        if image and self.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        if x.shape[1:] != want or len(x) == 0:
            raise UserError(f"input batch has shape {x.shape}, the model takes (N, {', '.join(map(str, want))})",
                            "pass normalized inputs of the model's input size (NCHW images)")
        if dtype.kind in "iu":
            scale, zero_point = detail["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)
        return np.ascontiguousarray(x)

    def prepare(self, x):
        """Normalized inputs -> the model's input tensors (all samples): NHWC, int32 or quantized as the file
        wants; the array itself for a single-input model, else a list in input order."""
        out = [self._prepare_one(a, d, i == 0 and len(d["shape"]) == 4)
               for i, (a, d) in enumerate(zip(self._arrays(x), self._ins))]
        return out[0] if len(out) == 1 else out

    def run_raw(self, x) -> np.ndarray:
        """One invoke on prepared batch-1 inputs; returns the raw output tensor (int8 stays int8)."""
        for a, d in zip(x if isinstance(x, list) else [x], self._ins):
            self._interpreter.set_tensor(d["index"], a[:1])
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._out["index"])

    def run(self, x) -> np.ndarray:
        """Normalized inputs (N >= 1) -> float32 outputs (N, ...), dequantized if the output is integer."""
        prepared = self.prepare(x)
        prepared = prepared if isinstance(prepared, list) else [prepared]
        raw = np.concatenate([self.run_raw([a[i:i + 1] for a in prepared]) for i in range(len(prepared[0]))])
        if np.dtype(self._out["dtype"]).kind in "iu":
            scale, zero_point = self._out["quantization"]
            return ((raw.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return raw.astype(np.float32)


def _interpreter_class() -> tuple[type, Callable[[Path], str | None]]:
    """The interpreter class and a reader of our layout metadata (ai-edge-litert; tflite-runtime as fallback)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, _layout_from_metadata
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError:
        raise UserError("no TFLite interpreter here (neither ai-edge-litert nor tflite-runtime imports)", INSTALL_FIX) from None
    return Interpreter, lambda path: None  # tflite-runtime ships no flatbuffer schema to read metadata with


def _layout_from_metadata(path: Path) -> str | None:
    """The layout recorded in our metadata entry, or None for a .tflite we did not write."""
    from ai_edge_litert import schema_py_generated as fb

    data = path.read_bytes()
    model = fb.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == METADATA_NAME.encode():
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())["layout"]
    return None


def _guess_layout(shape: tuple[int, ...]) -> str:
    """Layout of a foreign 4-D input: channels are the smaller of dims 1 and 3 (TFLite's NHWC on a tie)."""
    return "NCHW" if shape[1] < shape[3] else "NHWC"


class LiteRT(base.Engine):
    """LiteRT (TFLite) on a phone or a Raspberry Pi: full-integer INT8 .tflite from litert-torch PT2E."""

    name = "tflite"
    install_hint = INSTALL_FIX
    int8_file = "model.int8.tflite"
    Runner = Runner
    host_runtime = "tflite"
    quantizes_torch = True
    runtime_packages = ("ai-edge-litert", "tflite-runtime")

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return available()

    def check_target(self, target, quantize_cfg) -> None:
        if target.precision == "fp16":
            raise UserError(f"target '{target.name}': precision 'fp16' is not offered by {self.name} on CPU",
                            "use int8, fp32 or auto")

    def quantizer(self, job: base.QuantizeJob) -> base.Quantizer:
        import torch

        from pipeline.compress.sensitivity import torch_layers
        t = job.target
        if job.source is None:
            raise UserError(f"target '{t.name}' (TFLite) needs a torch model, got {job.model_name}",
                            "pass FILE.py:FACTORY or MODEL.pt2, or pick an onnxruntime/tensorrt target")
        with torch.no_grad():
            reference = np.concatenate([job.held_x[i:i + 256].call(job.source).numpy()
                                        for i in range(0, len(job.held_x), 256)])

        def convert(float_layers: Sequence[str], path: Path = job.dest) -> dict:
            return convert_int8(job.to_quantize, job.example, job.calib, path, io_dtype=t.io_dtype, method=job.method,
                                float_layers=float_layers, per_channel=job.per_channel)

        def logits(path: Path) -> np.ndarray:
            return Runner(path, threads=t.threads).run(job.held_x)

        def proxy(float_layers: Sequence[str]) -> np.ndarray:
            convert(float_layers, job.tmp / "sensitivity.tflite")
            return logits(job.tmp / "sensitivity.tflite")

        from pipeline.compress.output_tail import torch_output_layers
        from pipeline.models import as_args
        heads = torch_output_layers(job.to_quantize, as_args(job.example))
        return base.Quantizer(torch_layers(job.to_quantize), reference, convert, logits, proxy,
                              "the target's own converter (litert-torch PT2E, convert_int8 float_layers)", job.prepared,
                              heads)

    def compile(self, job: base.CompileJob) -> dict:
        import shutil
        t = job.target
        shutil.copyfile(job.int8, job.out / self.int8_file)
        float_meta = convert_float(job.torch_model(), job.example, job.out / "model.fp32.tflite")
        runner = Runner(job.out / self.int8_file, threads=t.threads)
        candidates = {"int8": self.int8_file, "fp32": "model.fp32.tflite"}
        return {"layout": runner.layout, "io_dtype": runner.io_dtype, "float_meta": float_meta,
                **base.choice_metrics(self, t, "TFLite", candidates, *job.choose(self, candidates))}

    def bench(self, tdir: Path, manifest: dict, warmup: int, runs: int, threads: int) -> dict:
        from pipeline.device import cpu_bench
        return cpu_bench(self, tdir, manifest, warmup, runs, threads)
