"""quantize (one per target): INT8 post-training quantization calibrated on a managed set, with the
numerics the target's engine wants:

- tensorrt: explicit-quantization QDQ ONNX (symmetric int8, zero-point 0, Q/DQ where TensorRT fuses
  them) from nvidia-modelopt's ONNX quantizer; layers kept in float are stored as fp16 when the
  target has fp16_fallback;
- onnxruntime: QDQ ONNX from onnxruntime.quantization.quantize_static;
- tflite: full-integer INT8 .tflite from litert-torch's PT2E quantizer.

Accuracy control (pipeline/sensitivity.py), measured on held-out training samples that are neither
calibration nor test samples, against the float model the artifact was made from:

- sensitivity (`quantize.sensitivity`): every Conv/Gemm (ONNX) or Conv/Linear (TFLite) layer is
  left in float alone once and the INT8 output error recorded; ranked in stage.json. For TensorRT the
  ranking uses ONNX Runtime's quantizer with symmetric activations as a proxy (one modelopt run costs
  ~10 s in a child process); the fallback itself always re-quantizes with modelopt.
- fallback (`quantize.fallback`): if the INT8 drop exceeds the budget, the most sensitive layers stay
  in float one by one until it does not, or the stage says the budget cannot be met and with what drop.

Depthwise-safe PTQ (pipeline/dfq.py, torch models): `quantize.equalize` (cross-layer equalization) and
`quantize.bias_correction` transform a BatchNorm-folded copy of the float model before the backend
quantizes it; drops are still measured against the untransformed float model. `quantize.per_channel =
false` gives per-tensor weights (ONNX Runtime, TFLite) for accelerators that need them, which is where
equalization matters most.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
import torch

from pipeline import backends
from pipeline.compress import calibration, dfq, sensitivity
from pipeline.config import Target
from pipeline.errors import UserError
from pipeline.runner import Context, Progress, Stage, log

OUTPUT_FILE = {"tensorrt": "model.int8.qdq.onnx", "onnxruntime": "model.int8.onnx", "tflite": "model.int8.tflite"}
TRT_PROXY_NOTE = ("ONNX Runtime's QDQ quantizer with symmetric int8 activations and weights (minmax for entropy), a "
                  "proxy for modelopt, which costs ~10 s per run; fallback steps re-quantize with modelopt")


class QuantizeStage(Stage):
    def __init__(self, target: Target, source: str):
        self.target = target
        self.name = f"quantize-{target.name}"
        self.inputs = ("load", source)
        self.source = source

    def method(self, ctx: Context) -> str:
        return ctx.config.quantize.method or self.target.calibration_method

    def dynamic_batch(self) -> bool:
        """TensorRT targets with [tensorrt] max_batch > 1 get a QDQ ONNX with a dynamic batch dim."""
        return self.target.backend == "tensorrt" and self.target.tensorrt.max_batch > 1

    def budget(self, ctx: Context) -> float:
        """Allowed INT8 accuracy drop vs the float model (quantize.max_drop, else the target's budget)."""
        q = ctx.config.quantize
        return self.target.budgets.max_accuracy_drop if q.max_drop is None else q.max_drop

    def config_slice(self, ctx: Context) -> dict:
        _, manifest, _ = ctx.calibration_set()
        q = ctx.config.quantize
        return {"backend": self.target.backend, "method": self.method(ctx), "io_dtype": self.target.io_dtype,
                "percentile": q.percentile, "seed": ctx.config.seed,
                "fp16_fallback": bool(self.target.tensorrt and self.target.tensorrt.fp16_fallback),
                "calibration": {"name": manifest["name"], "sha256": manifest["sha256"]},
                "sensitivity": q.sensitivity, "fallback": q.fallback, "max_drop": self.budget(ctx),
                "max_float_layers": q.max_float_layers, "heldout_samples": q.heldout_samples,
                "per_channel": q.per_channel, "equalize": q.equalize, "bias_correction": q.bias_correction,
                "dynamic_batch": self.dynamic_batch()}

    def run(self, ctx: Context, out: Path) -> dict:
        t, ds, q = self.target, ctx.data, ctx.config.quantize
        x_cal, manifest, man_path = ctx.calibration_set()
        calib = ds.normalize(x_cal)
        dest = out / OUTPUT_FILE[t.backend]
        budget = self.budget(ctx)
        held = sensitivity.held_out(ds, manifest.get("indices", []), q.heldout_samples, ctx.config.seed + 2)
        if not q.per_channel and t.backend == "tensorrt":
            raise UserError(f"quantize.per_channel=false: target '{t.name}' (TensorRT) is quantized by modelopt with "
                            "per-channel weights only", "drop the setting for TensorRT targets")
        with tempfile.TemporaryDirectory(prefix="edge-compress-quantize.") as tmp:
            eng = self._engine(ctx, calib, held, dest, Path(tmp))
            meta = {"meta": eng.build(())}

            def shipped(float_layers: Sequence[str]) -> np.ndarray:
                """Re-quantize the shipped artifact with these float layers; its held-out logits."""
                meta["meta"] = eng.build(float_layers)
                return eng.logits(dest)

            all_int8 = sensitivity.score(eng.logits(dest), eng.reference, held.y)
            float_acc = float(np.mean(eng.reference.argmax(1) == held.y))
            over = float_acc - all_int8["accuracy"] > budget
            ranked = None
            if q.sensitivity or (q.fallback and over):
                prog = Progress(self.name, len(eng.layers), unit="sensitivity layer")
                ranked = {**sensitivity.rank(eng.layers, eng.proxy, eng.reference, held.y, progress=prog.update),
                          "measured_with": eng.proxy_note}
            fb = None
            if q.fallback:
                order = [r["layer"] for r in ranked["ranking"]] if ranked else []
                fb = sensitivity.fallback(order, shipped, eng.reference, held.y, budget, q.max_float_layers,
                                          all_int8=all_int8)
            drop = fb["accuracy_drop"] if fb else float_acc - all_int8["accuracy"]
            float_layers = fb["float_layers"] if fb else []
            log.info("[%s] INT8 drop %.2f pt vs the float model on %d held-out training samples (budget %.2f pt)%s",
                     self.name, drop * 100, len(held.y), budget * 100,
                     f"; kept in float: {', '.join(f['layer'] for f in float_layers)}" if float_layers else "")
            if drop > budget:
                log.warning("[%s] the INT8 accuracy budget cannot be met%s: drop %.2f pt > %.2f pt", self.name,
                            f" with up to {q.max_float_layers} float layers" if q.fallback else " (fallback is off)",
                            drop * 100, budget * 100)
        return {
            "backend": t.backend, "method": self.method(ctx), "file": dest.name,
            "calibration": {"name": manifest["name"], "manifest": man_path.name, "sha256": manifest["sha256"],
                            "size": manifest["size"], "seed": manifest["seed"], "source": manifest["source"]["data"]},
            "heldout": {"samples": int(len(held.y)), "split": "train", "excludes": "the calibration samples",
                        "seed": ctx.config.seed + 2},
            "float_accuracy": float_acc,
            "accuracy_drop_vs_float": drop,
            "budget": budget,
            "budget_met": drop <= budget,
            "float_layers": float_layers,
            "float_precision": "fp16" if t.backend == "tensorrt" and t.tensorrt.fp16_fallback else "fp32",
            "fallback": fb,
            "sensitivity": ranked,
            "depthwise_safe": eng.prepared,
            "engine_meta": meta["meta"],
        }

    def _engine(self, ctx: Context, calib: np.ndarray, held: sensitivity.HeldOut, dest: Path, tmp: Path) -> "_Engine":
        """The backend's quantizer writing `dest`, its runner and the sensitivity proxy."""
        t, ds = self.target, ctx.data
        backend = backends.get(t.backend)
        method = self.method(ctx)
        q = ctx.config.quantize
        spec = ctx.model_spec()
        example = torch.from_numpy(ds.normalize(ds.x_test[:1]))
        dfq_on = q.equalize or q.bias_correction
        if spec.kind == "onnx" and dfq_on:
            raise UserError(f"quantize.equalize / quantize.bias_correction transform a torch model; "
                            f"{spec.path.name} is ONNX", "pass FILE.py:FACTORY or MODEL.pt2, or turn both off")
        if spec.kind == "onnx" and t.backend == "tflite":
            raise UserError(f"target '{t.name}' (TFLite) needs a torch model, got {spec.path.name}",
                            "pass FILE.py:FACTORY or MODEL.pt2, or pick an onnxruntime/tensorrt target")
        # The float model as the source stage wrote it (the reference of every drop), and the one the backend
        # quantizes: the same, or a copy transformed by pipeline/dfq.py.
        needs_torch = dfq_on or t.backend == "tflite" or self.dynamic_batch()
        source = ctx.torch_model(self.source) if spec.kind != "onnx" and needs_torch else None
        to_quantize, prepared = source, None
        if dfq_on:
            to_quantize, prepared = dfq.prepare(source, torch.from_numpy(calib), q.equalize, q.bias_correction,
                                                q.per_channel)
            done = ([f"{len(prepared['equalize']['pairs'])} layer pairs equalized"] if q.equalize else []) + \
                ([f"{prepared['bias_correction']['layers']} biases corrected"] if q.bias_correction else [])
            log.info("[%s] depthwise-safe PTQ: %s", self.name, ", ".join(done))
        if t.backend == "tflite":
            with torch.no_grad():
                reference = np.concatenate([source(torch.from_numpy(held.x[i:i + 256])).numpy()
                                            for i in range(0, len(held.x), 256)])

            def convert(float_layers: Sequence[str], path: Path = dest) -> dict:
                return backend.convert_int8(to_quantize, example, calib, path, io_dtype=t.io_dtype, method=method,
                                            float_layers=float_layers, per_channel=q.per_channel)

            def tfl_logits(path: Path) -> np.ndarray:
                return backend.Runner(path, threads=t.threads).run(held.x)

            def tfl_proxy(float_layers: Sequence[str]) -> np.ndarray:
                convert(float_layers, tmp / "sensitivity.tflite")
                return tfl_logits(tmp / "sensitivity.tflite")

            return _Engine(sensitivity.torch_layers(to_quantize), reference, convert, tfl_logits, tfl_proxy,
                           "the target's own converter (litert-torch PT2E, convert_int8 float_layers)", prepared)

        ort = backends.require("onnxruntime")
        onnx_src = ctx.artifact(self.source, "model.onnx")
        reference = ort.Runner(onnx_src, threads=t.threads).run(held.x)
        onnx_in = onnx_src
        # A TensorRT optimization profile up to [tensorrt] max_batch needs a dynamic batch dim.
        if prepared is not None or (self.dynamic_batch() and source is not None):
            onnx_in = tmp / "to-quantize.onnx"
            ort.export_onnx(to_quantize, example, onnx_in, dynamic_batch=self.dynamic_batch())
        elif self.dynamic_batch() and isinstance(ort.io_shapes(ort.load_onnx(onnx_src))["inputs"][ort.INPUT_NAME][0], int):
            raise UserError(f"target '{t.name}' asks for [tensorrt] max_batch = {t.tensorrt.max_batch}, but "
                            f"{spec.path.name} has a fixed batch dim",
                            "re-export the ONNX with a dynamic batch axis, or set max_batch = 1")

        def onnx_logits(path: Path) -> np.ndarray:
            return ort.Runner(path, threads=t.threads).run(held.x)

        if t.backend == "tensorrt":
            def build(float_layers: Sequence[str]) -> dict:
                return backend.quantize_int8(onnx_in, calib, dest, method=method, exclude_nodes=float_layers,
                                             fp16_fallback=t.tensorrt.fp16_fallback)
            proxy_method, symmetric, note = ("minmax" if method == "entropy" else method), True, TRT_PROXY_NOTE
        else:
            def build(float_layers: Sequence[str]) -> dict:
                return backend.quantize_int8(onnx_in, calib, dest, method=method, exclude_nodes=float_layers,
                                             per_channel=q.per_channel)
            proxy_method, symmetric = method, False
            note = "the target's own quantizer (onnxruntime quantize_static, exclude_nodes)"

        def onnx_proxy(float_layers: Sequence[str]) -> np.ndarray:
            ort.quantize_int8(onnx_in, calib, tmp / "sensitivity.onnx", method=proxy_method,
                              exclude_nodes=float_layers, activation_symmetric=symmetric, per_channel=q.per_channel)
            return onnx_logits(tmp / "sensitivity.onnx")

        return _Engine(sensitivity.onnx_layers(onnx_in), reference, build, onnx_logits, onnx_proxy, note, prepared)


@dataclass(frozen=True)
class _Engine:
    """What sensitivity and fallback need from a backend.

    layers: the quantizable layer names; reference: the float model's held-out logits; build: quantize
    with these layers in float into the stage's output file, returning the engine's meta; logits: an
    artifact's held-out logits; proxy: held-out logits of a throw-away INT8 model with these float
    layers (for the ranking); proxy_note: what the proxy is; prepared: what pipeline/dfq.py did to the
    float model before quantizing (None when nothing).
    """

    layers: list[str]
    reference: np.ndarray
    build: Callable[[Sequence[str]], dict]
    logits: Callable[[Path], np.ndarray]
    proxy: sensitivity.Quantized
    proxy_note: str
    prepared: dict | None = None
